"""render: one aligned raw sample (rgb, depth, semseg, caption, labels, scene).

The sample contract is in m4.data.scenes' docstring.
"""

from __future__ import annotations

import time

import numpy as np

from m4.data import scene_extras
from m4.data.scene_captions import make_caption
from m4.data.scene_graph import Scene, rng_for, sample_layout, sample_objects
from m4.data.scene_raycast import camera_rays, cast, project, shade, to_uint8
from m4.data.scene_spec import FIRST_OBJECT_CLASS, GROUND, SKY, SceneSpec

# A scene is redrawn (same objects, new layout and camera) unless every object
# covers at least this fraction of the image and its own centre pixel ...
MIN_VISIBLE_FRACTION = 0.008
MAX_ATTEMPTS = 1000
# ... and its centre lies at least this fraction of the width inside the image.
CENTRE_MARGIN = 0.08


def _find_layout(rng, shape, color, size, res: int):
  """Draws layouts until every object is visible enough; returns the scene
  with its pixel-centre hits (t, ids, part) and the objects' centres and areas."""
  n = len(shape)
  min_px = max(1, int(round(MIN_VISIBLE_FRACTION * res * res)))
  for _ in range(MAX_ATTEMPTS):
    scene = sample_layout(rng, shape, color, size)
    if scene is None:
      continue
    t, ids, part = cast(scene, scene.cam_pos, camera_rays(scene, res, 1))
    ids = ids.reshape(res, res)
    centre = scene.position + np.array([0, 1, 0]) * scene.height[:, None] / 2
    center_px, depth_m = project(scene, centre, res)
    margin = CENTRE_MARGIN * res
    if not np.all((center_px >= margin) & (center_px <= res - margin)) or np.any(depth_m <= 0):
      continue
    area = np.bincount(ids.ravel() + 1, minlength=n + 2)[2:]
    col, row = np.floor(center_px).astype(int).T
    if np.all(area >= min_px) and np.all(ids[row, col] == np.arange(1, n + 1)):
      return scene, t.reshape(res, res), ids, part.reshape(res, res), center_px, depth_m, area
  return None


def _sort_left_to_right(scene: Scene, ids, center_px, depth_m, area):
  """Reorders the objects (and object ids 1 + k in `ids`) by image column."""
  n = len(scene.shape)
  order = np.argsort(center_px[:, 0], kind="stable")
  rank = np.zeros(n + 2, np.int64)  # Indexed by ids + 1: sky, ground, objects.
  rank[order + 2] = np.arange(1, n + 1)
  for name in ("shape", "color", "size", "position", "rotation"):
    setattr(scene, name, getattr(scene, name)[order])
  ids = np.where(ids > 0, rank[ids + 1], ids)
  return ids, center_px[order], depth_m[order], area[order]


def render(index: int, *, seed: int = 0, split: str = "train", resolution: int = 64,
           min_objects: int = 1, max_objects: int = 4, antialias: int = 2,
           extras: tuple[str, ...] = ()) -> dict:
  """Sample `index` of `split`: a raw-sample dict (see m4.data.scenes), with
  the keys `extras` names (m4.data.scene_extras) added.

  A pure function of its arguments: the same arguments give bit-identical
  arrays.
  """
  spec = SceneSpec(resolution=resolution, min_objects=min_objects, max_objects=max_objects,
                   seed=seed, antialias=antialias, extras=tuple(extras))
  rng = rng_for(spec.seed, split, int(index))
  # What is in the scene is drawn once; only where it stands may be redrawn.
  shape, color, size = sample_objects(rng, spec.min_objects, spec.max_objects)
  n, res = len(shape), spec.resolution
  found = _find_layout(rng, shape, color, size, res)
  if found is None:
    raise RuntimeError(f"scenes: no valid layout for {split} sample {index} "
                       f"after {MAX_ATTEMPTS} attempts (seed {seed}).")
  scene, t, ids, part, center_px, depth_m, area = found
  ids, center_px, depth_m, area = _sort_left_to_right(scene, ids, center_px, depth_m, area)

  semseg = np.where(ids < 0, SKY, np.where(
      ids == 0, GROUND, FIRST_OBJECT_CLASS + scene.shape[np.maximum(ids, 1) - 1]))
  depth = np.where(np.isfinite(t), t, 0.0)
  a = spec.antialias
  d = camera_rays(scene, res, a)
  linear = shade(scene, d, *cast(scene, scene.cam_pos, d))
  linear = linear.reshape(res, a, res, a, 3).mean(axis=(1, 3))

  bbox = np.full((n, 4), -1, np.int64)
  for k in range(n):
    rows, cols = np.nonzero(ids == k + 1)
    bbox[k] = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]

  big = int(np.argmax(scene.size))
  kmax = spec.max_objects

  def pad(x, dtype):
    x = np.asarray(x, dtype)
    out = np.full((kmax,) + x.shape[1:], -1, dtype)
    out[:n] = x
    return out

  sample = {
      "rgb": to_uint8(linear),
      "depth": depth.astype(np.float32),
      "semseg": semseg.astype(np.uint8),
      "caption": make_caption(scene.shape, scene.color, scene.size, center_px, depth_m, res),
      "labels": {"count": np.int32(n), "largest_shape": np.int32(scene.shape[big])},
      "scene": {
          "shape": pad(scene.shape, np.int32),
          "color": pad(scene.color, np.int32),
          "size": pad(scene.size, np.int32),
          "center_px": pad(center_px, np.float32),
          "depth_m": pad(depth_m, np.float32),
          "area_px": pad(area, np.int32),
          "bbox_px": pad(bbox, np.int32),
          "position": pad(scene.position, np.float32),
          "radius": pad(scene.radius, np.float32),
          "rotation": pad(scene.rotation, np.float32),
          "camera_position": scene.cam_pos.astype(np.float32),
          "camera_rotation": scene.cam_rot.astype(np.float32),
          "focal_px": np.float32(res / 2 / scene.tan_half_fov),
          "light_direction": scene.light.astype(np.float32),
      },
      "id": np.int64(index),
  }
  if spec.extras:
    sample.update(scene_extras.compute(spec.extras, scene, t, ids, part, sample))
  return sample


def benchmark(spec: SceneSpec, num: int) -> float:
  """Samples per second of `render` in this process (test split indices)."""
  render(0, split="test", **spec.render_args())  # Warm up.
  t0 = time.perf_counter()
  for i in range(num):
    render(i, split="test", **spec.render_args())
  return num / max(time.perf_counter() - t0, 1e-9)
