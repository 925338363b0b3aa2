"""Optional 4M-21-style ground truth of a scenes sample (SceneSpec.extras).

Every map comes from the same pixel-centre rays as depth and semseg, so it is
exactly aligned with them:

  normals    float32 (H, W, 3): unit surface normal of the hit in camera space,
             axes = the rows of scene.camera_rotation (x right, y up, z
             forward, into the image); it faces the camera (normal . ray < 0);
             sky = 0.
  instance   uint8 (H, W): 0 sky, 1 ground, 2 + k for `scene` entry k (the
             objects left to right, as the caption names them); 255 would be
             unlabelled, as in semseg (the renderer labels every pixel).
  edges      uint8 (H, W) in {0, 1}: both pixels of every 4-neighbour pair
             that differ in instance, or whose depth jumps (either pixel's
             tangent plane predicts the other's depth off by more than
             DEPTH_JUMP, relative), or whose normals turn by more than
             CREASE_DEG (a crease: a cube's edges, a cylinder's rim).
  rgb_edges  uint8 (H, W) in {0, 1}: Canny-style edges of the RGB's luminance
             (3x3 blur, Sobel, non-maximum suppression, hysteresis between
             CANNY_LOW and CANNY_HIGH).
  boxes      {"class": int32 (K,) CLASSES id (2 + shape), "bbox_px": int32
             (K, 4) (x0, y0, x1, y1), exclusive ends}: scene's objects, padded
             to max_objects with -1.
  palette    {"colors": uint8 (PALETTE_SIZE, 3), "fraction": float32
             (PALETTE_SIZE,)}: the RGB's dominant colours by k-means
             (a greedy start over 8-level RGB bins, weighing pixels and
             distance; KMEANS_STEPS Lloyd steps), most pixels first, and the
             share of pixels each one holds.
  metadata   {"count": int32 objects, "camera_pitch_deg": float32 degrees below
             the horizon, "camera_height_m": float32, "brightness": float32
             mean luma of the RGB in [0, 1], "object_fraction": float32 share
             of object pixels}.

palette and metadata describe the whole image; a crop does not update them.
"""

from __future__ import annotations

import numpy as np

from m4.data.scene_graph import Scene
from m4.data import scene_raycast
from m4.data.scene_raycast import camera_rays, surface_normals
from m4.data.scene_spec import FIRST_OBJECT_CLASS

DEPTH_JUMP = 0.1  # Relative depth error of the neighbour's tangent plane.
CREASE_DEG = 45.0
CANNY_LOW, CANNY_HIGH = 0.02, 0.05  # Luma gradient per pixel, luma in [0, 1].
PALETTE_SIZE = 4
KMEANS_STEPS = 10
_LUMA = np.array([0.299, 0.587, 0.114])


def camera_normals(scene: Scene, t: np.ndarray, ids: np.ndarray, part: np.ndarray) -> np.ndarray:
  """(H, W, 3) camera-space unit normals of the pixel-centre hits; sky 0."""
  res = t.shape[0]
  d = camera_rays(scene, res, 1)
  hit = np.flatnonzero(ids.ravel() >= 0)
  p = scene.cam_pos + t.ravel()[hit, None] * d[hit]
  out = np.zeros((res * res, 3))
  out[hit] = surface_normals(scene, p, ids.ravel()[hit], part.ravel()[hit]) @ scene.cam_rot.T
  return out.reshape(res, res, 3).astype(np.float32)


def instance_map(ids: np.ndarray) -> np.ndarray:
  """cast's ids (-1 sky, 0 ground, 1 + k object k) -> instance ids."""
  return (ids + 1).astype(np.uint8)


def _mark_pairs(horizontal: np.ndarray, vertical: np.ndarray) -> np.ndarray:
  """Both pixels of each flagged pair: horizontal (H, W-1), vertical (H-1, W)."""
  h, w = horizontal.shape[0], vertical.shape[1]
  out = np.zeros((h, w), bool)
  out[:, :-1] |= horizontal
  out[:, 1:] |= horizontal
  out[:-1] |= vertical
  out[1:] |= vertical
  return out


def _pairs(x: np.ndarray):
  """(left, right) and (top, bottom) neighbour pairs of an (H, W, ...) array."""
  return (x[:, :-1], x[:, 1:]), (x[:-1], x[1:])


def _plane_error(n_a, p_a, d_b, depth_b):
  """Relative error of a's tangent plane as a predictor of b's depth."""
  with np.errstate(divide="ignore", invalid="ignore"):
    pred = np.sum(n_a * p_a, -1) / np.sum(n_a * d_b, -1)
  err = np.abs(pred - depth_b) / np.maximum(depth_b, 1e-9)
  return np.where(np.sum(n_a * d_b, -1) < 0, err, np.inf)


def geometry_edges(instance, depth, normals, tan_half_fov: float) -> np.ndarray:
  """Occlusion and shape boundaries (module docstring) as uint8 {0, 1}."""
  d = scene_raycast.camera_space_rays(depth.shape[0], tan_half_fov)
  p = depth.astype(np.float64)[..., None] * d  # Hit points.
  n = normals.astype(np.float64)
  cos_crease = np.cos(np.deg2rad(CREASE_DEG))
  flags = []
  for (ia, ib), (za, zb), (na, nb), (da, db), (pa, pb) in zip(
      _pairs(instance), _pairs(depth), _pairs(n), _pairs(d), _pairs(p)):
    both = (za > 0) & (zb > 0)
    jump = np.minimum(_plane_error(na, pa, db, zb), _plane_error(nb, pb, da, za)) > DEPTH_JUMP
    crease = np.sum(na * nb, -1) < cos_crease
    flags.append((ia != ib) | (both & (jump | crease)))
  return _mark_pairs(*flags).astype(np.uint8)


def _filter3(x: np.ndarray, ky, kx) -> np.ndarray:
  """Separable 3x3 correlation with edge padding."""
  p = np.pad(x, 1, mode="edge")
  rows = sum(k * p[i:i + x.shape[0]] for i, k in enumerate(ky))
  return sum(k * rows[:, i:i + x.shape[1]] for i, k in enumerate(kx))


def _non_maximum(mag, gx, gy) -> np.ndarray:
  """True where mag is a maximum along its gradient (4 directions)."""
  angle = np.rad2deg(np.arctan2(gy, gx)) % 180
  sector = (np.round(angle / 45).astype(int) % 4)  # 0: x, 1: diagonal, 2: y, 3: anti.
  steps = ((0, 1), (1, 1), (1, 0), (1, -1))  # (row, col) along each direction.
  p = np.pad(mag, 1)
  h, w = mag.shape
  keep = np.zeros(mag.shape, bool)
  for s, (dr, dc) in enumerate(steps):
    ahead = p[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
    behind = p[1 - dr:1 - dr + h, 1 - dc:1 - dc + w]
    keep |= (sector == s) & (mag >= ahead) & (mag > behind)
  return keep


def _hysteresis(strong, weak) -> np.ndarray:
  """Weak pixels 8-connected to strong ones, grown until nothing changes."""
  edges = strong & weak
  while True:
    p = np.pad(edges, 1)
    grown = np.zeros_like(edges)
    for dr in range(3):
      for dc in range(3):
        grown |= p[dr:dr + edges.shape[0], dc:dc + edges.shape[1]]
    grown &= weak
    if np.array_equal(grown, edges):
      return edges
    edges = grown


def rgb_edges(rgb: np.ndarray) -> np.ndarray:
  """Canny-style edges of uint8 RGB (module docstring) as uint8 {0, 1}."""
  luma = _filter3(rgb.astype(np.float64) @ _LUMA / 255, (0.25, 0.5, 0.25), (0.25, 0.5, 0.25))
  gx = _filter3(luma, (0.25, 0.5, 0.25), (-0.5, 0.0, 0.5))  # Per pixel.
  gy = _filter3(luma, (-0.5, 0.0, 0.5), (0.25, 0.5, 0.25))
  mag = np.hypot(gx, gy)
  thin = _non_maximum(mag, gx, gy)
  return _hysteresis(thin & (mag >= CANNY_HIGH), thin & (mag >= CANNY_LOW)).astype(np.uint8)


def boxes(scene_arrays) -> dict:
  """The objects' classes and visible-pixel boxes from a sample's `scene`."""
  shape = scene_arrays["shape"]
  return {"class": np.where(shape >= 0, FIRST_OBJECT_CLASS + shape, -1).astype(np.int32),
          "bbox_px": np.asarray(scene_arrays["bbox_px"], np.int32)}


def _initial_centres(x: np.ndarray, k: int) -> np.ndarray:
  """k starting colours: the mean colours of 8-level RGB bins, the fullest
  first, then each maximising (pixels) x (squared distance to those chosen)."""
  bins = np.ravel_multi_index(tuple((x // 32).astype(int).T), (8, 8, 8))
  _, label, count = np.unique(bins, return_inverse=True, return_counts=True)
  means = np.stack([np.bincount(label, x[:, c]) for c in range(3)], -1) / count[:, None]
  chosen = [int(np.argmax(count))]
  dist = np.sum((means - means[chosen[0]]) ** 2, -1)
  for _ in range(k - 1):
    chosen.append(int(np.argmax(count * dist)))
    dist = np.minimum(dist, np.sum((means - means[chosen[-1]]) ** 2, -1))
  return means[chosen]


def _nearest_centre(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
  """Index of the nearest centre of each row of x (ties: the first)."""
  return np.argmin(np.sum(centres ** 2, -1) - 2 * x @ centres.T, -1)


def palette(rgb: np.ndarray, k: int = PALETTE_SIZE) -> dict:
  """The k dominant colours of uint8 RGB and their pixel shares (k-means)."""
  x = rgb.reshape(-1, 3).astype(np.float64)
  centres = _initial_centres(x, k)
  for _ in range(KMEANS_STEPS):
    label = _nearest_centre(x, centres)
    count = np.bincount(label, minlength=k)
    sums = np.stack([np.bincount(label, x[:, c], minlength=k) for c in range(3)], -1)
    centres = np.where(count[:, None] > 0, sums / np.maximum(count, 1)[:, None], centres)
  count = np.bincount(_nearest_centre(x, centres), minlength=k)
  order = np.argsort(-count, kind="stable")
  return {"colors": np.round(centres[order]).astype(np.uint8),
          "fraction": (count[order] / len(x)).astype(np.float32)}


def metadata(scene: Scene, rgb: np.ndarray, instance: np.ndarray) -> dict:
  """Object count, camera pitch and height, brightness, object share."""
  return {
      "count": np.int32(len(scene.shape)),
      "camera_pitch_deg": np.float32(np.rad2deg(np.arcsin(-scene.cam_rot[2, 1]))),
      "camera_height_m": np.float32(scene.cam_pos[1]),
      "brightness": np.float32(np.mean(rgb.astype(np.float64) @ _LUMA) / 255),
      "object_fraction": np.float32(np.mean(instance >= 2)),
  }


def compute(names, scene: Scene, t, ids, part, sample) -> dict:
  """The extras `names` of a rendered sample (its rgb, depth and scene) from
  its pixel-centre hits (t, ids, part), objects already left to right."""
  out = {}
  instance = instance_map(ids)
  if "normals" in names or "edges" in names:
    normals = camera_normals(scene, t, ids, part)
  if "normals" in names:
    out["normals"] = normals
  if "instance" in names:
    out["instance"] = instance
  if "edges" in names:
    out["edges"] = geometry_edges(instance, sample["depth"], normals, scene.tan_half_fov)
  if "rgb_edges" in names:
    out["rgb_edges"] = rgb_edges(sample["rgb"])
  if "boxes" in names:
    out["boxes"] = boxes(sample["scene"])
  if "palette" in names:
    out["palette"] = palette(sample["rgb"])
  if "metadata" in names:
    out["metadata"] = metadata(scene, sample["rgb"], instance)
  return out
