"""The scenes dataset: small procedural 3D scenes, every modality exactly aligned.

Between min_objects and max_objects (at most 5) objects, each a shape of
SHAPES, a colour of COLORS and a size of SIZES, stand on a ground plane under
a sky, seen from a random camera (45 degree field of view, no roll) and lit by
a sun that casts shadows. Objects never intersect; every object is visible
(its centre pixel and at least 0.8 % of the image). Vectorised numpy ray
casting with analytic intersections gives, per sample (the raw-sample
contract of m4.data):

  rgb      uint8 (H, W, 3): diffuse + hemispheric ambient shading, cast
           shadows, a sky gradient; anti-aliased by supersampling.
  depth    float32 (H, W): z-depth in metres of the pixel-centre ray, at most
           GROUND_FAR (25 m; the ground ends there); sky = 0 (invalid).
  semseg   uint8 (H, W): CLASSES ids of the pixel-centre ray (0 sky, 1 ground,
           2 + shape id for objects).
  caption  str: every object, left to right as the camera sees it, e.g.
           "a large red sphere left of a small blue cube in front of a medium
           gray cone" (each relation links an object to the next one).
  labels   {"count": int32 number of objects,
            "largest_shape": int32 SHAPES id of the largest object}: the
           object whose size (in SIZES) is largest; sizes are drawn so that
           exactly one object has the largest size.
  scene    per-object arrays padded to max_objects with -1, objects sorted left
           to right (the caption's order): shape, color, size (ids into SHAPES,
           COLORS, SIZES), center_px (x = column, y = row, continuous pixel
           coordinates: pixel (r, c) covers [c, c+1) x [r, r+1)) of the
           projected bounding-box centre (always visible: scenes where it is
           occluded are redrawn), depth_m (its z-depth), area_px (visible
           pixels), bbox_px (x0, y0, x1, y1) of the visible pixels (exclusive
           ends), position (world base centre, metres), radius, rotation;
           and the camera (camera_position, camera_rotation rows = right, up,
           forward; focal_px) and light_direction.
  id       int64, the index within its split.

A sample is a pure function of (seed, split, index, generation parameters):
the splits draw from disjoint seed streams, so they never overlap.

On disk (`ensure`, or `python -m m4.data.scenes`), a dataset is a directory:

  DIR/spec.json                the generation parameters (SceneSpec) + tables
  DIR/{train,validation,test}.array_record
                               one msgpack record per sample, in index order

Each split is written to a temporary file and renamed when complete, so an
interrupted run leaves no half split behind; rerunning resumes with the
missing splits. Files other than these in DIR are never touched.

    python -m m4.data.scenes --out /tmp/scenes --num 4000 [--workers 2]
        [--num_validation 400 --num_test 400 --resolution 64 --max_objects 4
         --seed 0 --split train]   # validation/test default to num // 10
    python -m m4.data.scenes --benchmark 500   # renders only, prints samples/s
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import multiprocessing
import os
import re
import socket
import sys
import time
from typing import Any, Iterator, Mapping

import numpy as np

SHAPES = ("sphere", "cube", "cylinder", "cone")
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "gray")
SIZES = ("small", "medium", "large")
# Semantic classes: sky, ground, then one class per shape (class = 2 + shape).
CLASSES = ("sky", "ground") + SHAPES
SKY, GROUND, FIRST_OBJECT_CLASS = 0, 1, 2
SPLITS = ("train", "validation", "test")
RELATIONS = ("left of", "in front of", "behind")

# RGB albedos of COLORS (display values; shading scales them).
ALBEDO = np.array([
    [0.78, 0.12, 0.10],  # red
    [0.92, 0.48, 0.08],  # orange
    [0.92, 0.80, 0.12],  # yellow
    [0.16, 0.62, 0.20],  # green
    [0.12, 0.70, 0.76],  # cyan
    [0.14, 0.28, 0.85],  # blue
    [0.50, 0.20, 0.72],  # purple
    [0.48, 0.48, 0.50],  # gray
])
GROUND_ALBEDO = np.array([0.66, 0.61, 0.53])
SKY_HORIZON = np.array([0.80, 0.87, 0.95])
SKY_ZENITH = np.array([0.35, 0.55, 0.85])
# Radius (metres) of the object's footprint per size; heights are 2x radius.
SIZE_RADIUS = np.array([0.5, 0.7, 0.92])
CUBE_HALF = 0.8  # A cube's half side, as a fraction of its size's radius.
AMBIENT, DIFFUSE = 0.42, 0.68

# Camera and layout (metres, degrees). Objects are placed in a camera-aligned
# rectangle around a centre on the ground; the camera circles it at a random
# azimuth, elevation and distance and looks at a point above it.
FOV_DEG = 45.0
ELEVATION_DEG = (17.0, 27.0)
DISTANCE = (5.6, 7.0)
LOOK_AT_HEIGHT = (0.5, 0.9)
LAYOUT_DEPTH = (-2.0, 1.4)  # Layout area: metres beyond the centre, seen from
LAYOUT_LATERAL = 0.75  # the camera, and this fraction of the half-width of
# the view at that depth to either side.
# Footprints (plus GAP) cover at most this fraction of the layout area; a
# crowded scene is scaled up (layout, camera distance and height), so it is
# seen from further away.
PACKING = 0.4
LIGHT_ELEVATION_DEG = (35.0, 60.0)
# The ground ends GROUND_FAR metres (z-depth) from the camera: beyond is sky,
# so every valid depth is finite and at most GROUND_FAR.
GROUND_FAR = 25.0
GAP = 0.12  # Minimal free space between two objects' footprints.
# A scene is redrawn (same objects, new layout and camera) unless every object
# covers at least this fraction of the image and its own centre pixel ...
MIN_VISIBLE_FRACTION = 0.008
MAX_ATTEMPTS = 1000
# ... and its centre lies at least this fraction of the width inside the image.
CENTRE_MARGIN = 0.08
# Consecutive objects (left to right) are "left of" each other when their
# centres are at least this fraction of the width apart, otherwise "in front
# of" / "behind" by depth.
LEFT_OF_FRACTION = 0.1
MAX_OBJECTS_LIMIT = 5  # More do not fit the layout; captions: <= 7 * K - 3 words.
_EPS = 1e-6

# Bumped whenever the renderer's output changes; datasets record it and ensure()
# refuses a dataset made by another version. 2: closer framing, at most 5
# objects, crowded scenes seen from further away.
RENDERER_VERSION = 2


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """The generation parameters of a scenes dataset (stored as spec.json).

  Attributes:
    resolution: image height and width in pixels.
    min_objects: fewest objects in a scene (>= 1).
    max_objects: most objects in a scene (<= MAX_OBJECTS_LIMIT); also the
      padded length of the per-object `scene` arrays.
    seed: the dataset seed; splits use disjoint streams derived from it.
    antialias: RGB supersamples per pixel side (1 = none); depth and semseg
      always come from the pixel-centre ray.
    num_train, num_validation, num_test: samples per split.
  """

  resolution: int = 64
  min_objects: int = 1
  max_objects: int = 4
  seed: int = 0
  antialias: int = 2
  num_train: int = 10000
  num_validation: int = 1000
  num_test: int = 1000

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"scenes: {f.name} must be an integer, got {v!r}.")
      object.__setattr__(self, f.name, int(v))
    if self.resolution < 16:
      raise ValueError(f"scenes: resolution must be >= 16, got {self.resolution}.")
    if not 1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS_LIMIT:
      raise ValueError(
          f"scenes: need 1 <= min_objects <= max_objects <= {MAX_OBJECTS_LIMIT},"
          f" got min_objects={self.min_objects}, max_objects={self.max_objects}.")
    if self.seed < 0:
      raise ValueError(f"scenes: seed must be >= 0, got {self.seed}.")
    if not 1 <= self.antialias <= 4:
      raise ValueError(f"scenes: antialias must be in 1..4, got {self.antialias}.")
    for split in SPLITS:
      if self.num(split) < 1:
        raise ValueError(f"scenes: num_{split} must be >= 1, got {self.num(split)}.")

  def num(self, split: str) -> int:
    _check_split(split)
    return getattr(self, f"num_{split}")

  def render_args(self) -> dict:
    """The keyword arguments of `render` that this spec fixes."""
    return dict(seed=self.seed, resolution=self.resolution, min_objects=self.min_objects,
                max_objects=self.max_objects, antialias=self.antialias)

  def to_json(self) -> dict:
    return {"renderer_version": RENDERER_VERSION, **dataclasses.asdict(self),
            "classes": list(CLASSES), "shapes": list(SHAPES), "colors": list(COLORS),
            "sizes": list(SIZES)}

  @classmethod
  def from_config(cls, config: Mapping[str, Any] | None) -> "SceneSpec":
    """The spec named by a data config's fields (others fields are ignored)."""
    config = config or {}
    fields = {}
    for f in dataclasses.fields(cls):
      if f.name in config and config[f.name] is not None:
        fields[f.name] = config[f.name]
    return cls(**fields)


def default_config():
  """The data config of a scenes dataset, for configs to start from."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict({
      "kind": "scenes", "dir": "", "workers": 1,
      **dataclasses.asdict(SceneSpec())})


def _check_split(split: str):
  if split not in SPLITS:
    raise ValueError(f"scenes: unknown split {split!r}; splits: {SPLITS}.")


# ----------------------------------------------------------------------------
# Scene sampling.


@dataclasses.dataclass
class _Scene:
  shape: np.ndarray  # (n,) int
  color: np.ndarray
  size: np.ndarray
  position: np.ndarray  # (n, 3) base centre on the ground.
  rotation: np.ndarray  # (n,) radians about the vertical axis.
  cam_pos: np.ndarray  # (3,)
  cam_rot: np.ndarray  # (3, 3) rows: right, up, forward.
  tan_half_fov: float
  light: np.ndarray  # (3,) unit vector towards the light.

  @property
  def radius(self) -> np.ndarray:
    return SIZE_RADIUS[self.size]

  @property
  def height(self) -> np.ndarray:
    r = self.radius
    return np.where(self.shape == SHAPES.index("cube"), 2 * CUBE_HALF * r, 2 * r)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
  _check_split(split)
  if index < 0:
    raise IndexError(f"scenes: index must be >= 0, got {index}.")
  return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def _sample_objects(rng, min_objects: int, max_objects: int):
  """Shapes, colours and sizes; exactly one object has the largest size."""
  n = int(rng.integers(min_objects, max_objects + 1))
  shape = rng.integers(0, len(SHAPES), n)
  color = rng.integers(0, len(COLORS), n)
  size = np.zeros(n, np.int64)
  largest = int(rng.integers(0, n))
  if n == 1:
    size[0] = rng.integers(0, len(SIZES))
  else:
    size[largest] = rng.integers(1, len(SIZES))
    others = np.arange(n) != largest
    size[others] = rng.integers(0, size[largest], n - 1)
  return shape, color, size


def _footprint(shape, size) -> np.ndarray:
  """Radius of the circle that holds each object's footprint, any rotation."""
  r = SIZE_RADIUS[size]
  return np.where(shape == SHAPES.index("cube"), CUBE_HALF * np.sqrt(2) * r, r)


def _sample_layout(rng, shape, color, size) -> _Scene | None:
  """Camera, light and non-overlapping positions; None if packing failed."""
  azimuth = rng.uniform(0, 2 * np.pi)
  elevation = np.deg2rad(rng.uniform(*ELEVATION_DEG))
  distance = rng.uniform(*DISTANCE)
  centre = np.array([rng.uniform(-0.3, 0.3), 0.0, rng.uniform(-0.3, 0.3)])
  tan = np.tan(np.deg2rad(FOV_DEG) / 2)
  near, far = LAYOUT_DEPTH
  area = (far - near) * 2 * LAYOUT_LATERAL * tan * (distance * np.cos(elevation)
                                                      + (near + far) / 2)
  foot = _footprint(shape, size)
  scale = max(1.0, np.sqrt(np.sum(np.pi * (foot + GAP / 2) ** 2) / (PACKING * area)))
  distance, near, far = scale * distance, scale * near, scale * far
  back = np.array([np.cos(azimuth) * np.cos(elevation), np.sin(elevation),
                   np.sin(azimuth) * np.cos(elevation)])
  cam_pos = centre + distance * back
  # Looking above the layout's centre leaves room for the sky.
  target = centre + [0.0, scale * rng.uniform(*LOOK_AT_HEIGHT), 0.0]
  forward = (target - cam_pos) / np.linalg.norm(target - cam_pos)
  right = np.cross(forward, [0.0, 1.0, 0.0])
  right /= np.linalg.norm(right)
  up = np.cross(right, forward)
  # Horizontal camera axes for the layout rectangle.
  fwd_h = np.array([forward[0], 0.0, forward[2]])
  fwd_h /= np.linalg.norm(fwd_h)

  n = len(shape)
  position = np.zeros((n, 3))
  placed = []
  for k in np.argsort(-foot, kind="stable"):  # Largest first packs best.
    for _ in range(100):
      v = rng.uniform(near, far)
      u = rng.uniform(-1, 1) * LAYOUT_LATERAL * tan * (distance * np.cos(elevation) + v)
      p = centre + u * right + v * fwd_h
      d = np.linalg.norm(position[placed][:, [0, 2]] - p[[0, 2]], axis=-1)
      if np.all(d >= foot[placed] + foot[k] + GAP):
        position[k] = p
        placed.append(k)
        break
    else:
      return None
  rotation = rng.uniform(0, np.pi / 2, n)
  light_az = rng.uniform(0, 2 * np.pi)
  light_el = np.deg2rad(rng.uniform(*LIGHT_ELEVATION_DEG))
  light = np.array([np.cos(light_az) * np.cos(light_el), np.sin(light_el),
                    np.sin(light_az) * np.cos(light_el)])
  return _Scene(shape=shape, color=color, size=size, position=position, rotation=rotation,
                cam_pos=cam_pos, cam_rot=np.stack([right, up, forward]),
                tan_half_fov=float(np.tan(np.deg2rad(FOV_DEG) / 2)), light=light)


# ----------------------------------------------------------------------------
# Ray casting. Rays are (origin O, direction D) with D's component along the
# camera's forward axis equal to 1 for camera rays, so the hit parameter t is
# the z-depth. Every intersector returns (t, part): t = inf where missed.


def _camera_rays(scene: _Scene, resolution: int, samples: int) -> np.ndarray:
  """Directions (resolution * samples)^2 x 3, row-major over sub-pixels."""
  n = resolution * samples
  c = (np.arange(n) + 0.5) / n * 2 - 1  # Sub-pixel centres in [-1, 1].
  x = c * scene.tan_half_fov
  y = -c * scene.tan_half_fov
  right, up, forward = scene.cam_rot
  d = forward[None, None] + x[None, :, None] * right + y[:, None, None] * up
  return d.reshape(-1, 3)


def _roots(a, b, c):
  """Both roots of a t^2 + b t + c = 0 (nan where none), smaller first."""
  disc = b * b - 4 * a * c
  sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
  with np.errstate(divide="ignore", invalid="ignore"):
    t1 = (-b - sq) / (2 * a)
    t2 = (-b + sq) / (2 * a)
  return np.minimum(t1, t2), np.maximum(t1, t2)


def _first(*candidates):
  """Nearest valid hit over (t, valid, part) candidates."""
  t_best = np.full(np.shape(candidates[0][0]), np.inf)
  part = np.zeros(t_best.shape, np.int8)
  for t, valid, p in candidates:
    take = valid & (t > _EPS) & (t < t_best)
    t_best = np.where(take, t, t_best)
    part = np.where(take, p, part)
  return t_best, part


def _hit_sphere(o, d, r):
  oc = o - np.array([0.0, r, 0.0])
  a = np.einsum("...i,...i->...", d, d)
  b = 2 * np.einsum("...i,...i->...", oc, d)
  c = np.einsum("...i,...i->...", oc, oc) - r * r
  t1, t2 = _roots(a, b, c)
  ok1, ok2 = np.isfinite(t1), np.isfinite(t2)
  return _first((t1, ok1, 0), (t2, ok2, 0))


def _hit_box(o, d, half, height):
  lo = np.array([-half, 0.0, -half])
  hi = np.array([half, height, half])
  with np.errstate(divide="ignore", invalid="ignore"):
    inv = 1.0 / d
    ta = (lo - o) * inv
    tb = (hi - o) * inv
  tmin = np.nanmax(np.minimum(ta, tb), axis=-1)
  tmax = np.nanmin(np.maximum(ta, tb), axis=-1)
  hit = tmax >= np.maximum(tmin, _EPS)
  return _first((tmin, hit, 0), (tmax, hit, 0))


def _hit_cylinder(o, d, r, height):
  ox, oy, oz = np.moveaxis(np.broadcast_to(o, d.shape), -1, 0)
  dx, dy, dz = np.moveaxis(d, -1, 0)
  t1, t2 = _roots(dx * dx + dz * dz, 2 * (ox * dx + oz * dz), ox * ox + oz * oz - r * r)
  y1, y2 = oy + t1 * dy, oy + t2 * dy
  with np.errstate(divide="ignore", invalid="ignore"):
    tc = (height - oy) / dy
  xc, zc = ox + tc * dx, oz + tc * dz
  cap = np.isfinite(tc) & (xc * xc + zc * zc <= r * r)
  return _first((t1, (y1 >= 0) & (y1 <= height), 0), (t2, (y2 >= 0) & (y2 <= height), 0),
                (tc, cap, 1))


def _hit_cone(o, d, r, height):
  k2 = (r / height) ** 2
  ox, oy, oz = np.moveaxis(np.broadcast_to(o, d.shape), -1, 0)
  dx, dy, dz = np.moveaxis(d, -1, 0)
  y0 = height - oy  # Distance below the apex, along -y.
  a = dx * dx + dz * dz - k2 * dy * dy
  b = 2 * (ox * dx + oz * dz + k2 * y0 * dy)
  c = ox * ox + oz * oz - k2 * y0 * y0
  t1, t2 = _roots(a, b, c)
  y1, y2 = oy + t1 * dy, oy + t2 * dy
  return _first((t1, (y1 >= 0) & (y1 <= height), 0), (t2, (y2 >= 0) & (y2 <= height), 0))


def _rotate_y(v, angle):
  """Rotates vectors (..., 3) by `angle` about the vertical axis."""
  c, s = np.cos(angle), np.sin(angle)
  x, y, z = np.moveaxis(v, -1, 0)
  return np.stack([c * x + s * z, y, -s * x + c * z], axis=-1)


def _hit_object(scene: _Scene, k: int, o, d, dd=None, oo=None):
  """(t, part) of rays with object k: one origin o (3,) and directions d (n, 3)
  (dd: their squared norms), or origins o (n, 3) (oo: their squared norms) and
  one unit direction d (3,).

  Only rays that meet the object's bounding sphere are intersected exactly.
  """
  h = float(scene.height[k])
  centre = scene.position[k] + [0.0, h / 2, 0.0]
  radius2 = float(_footprint(scene.shape[k], scene.size[k])) ** 2 + (h / 2) ** 2
  if np.ndim(o) == 1:
    oc = o - centre
    b = d @ oc
    disc = b * b - dd * (oc @ oc - radius2)
  else:
    b = o @ d - centre @ d
    disc = b * b - (oo - 2 * (o @ centre) + centre @ centre - radius2)
  # Meets the sphere, and not only behind the origin (far root > 0).
  idx = np.flatnonzero((disc >= 0) & (b < np.sqrt(np.maximum(disc, 0))))
  n = len(d) if np.ndim(o) == 1 else len(o)
  t = np.full(n, np.inf)
  part = np.zeros(n, np.int8)
  if idx.size:
    if np.ndim(o) == 1:
      t[idx], part[idx] = _hit_object_exact(scene, k, o, d[idx])
    else:
      t[idx], part[idx] = _hit_object_exact(scene, k, o[idx], np.broadcast_to(d, (idx.size, 3)))
  return t, part


def _hit_object_exact(scene: _Scene, k: int, o, d):
  """(t, part) of rays (o, d) with object k (in its local frame)."""
  shape = SHAPES[scene.shape[k]]
  r = float(scene.radius[k])
  o_local = o - scene.position[k]
  if shape == "sphere":
    return _hit_sphere(o_local, d, r)
  if shape == "cube":
    a = -scene.rotation[k]
    return _hit_box(_rotate_y(o_local, a), _rotate_y(d, a), CUBE_HALF * r, 2 * CUBE_HALF * r)
  if shape == "cylinder":
    return _hit_cylinder(o_local, d, r, 2 * r)
  return _hit_cone(o_local, d, r, 2 * r)


def _normal_object(scene: _Scene, k: int, p, part):
  """Unit outward normals at points p (n, 3) on object k."""
  shape = SHAPES[scene.shape[k]]
  r = float(scene.radius[k])
  q = p - scene.position[k]
  if shape == "sphere":
    n = q - np.array([0.0, r, 0.0])
  elif shape == "cube":
    half = CUBE_HALF * r
    ql = _rotate_y(q, -scene.rotation[k]) - np.array([0.0, half, 0.0])
    axis = np.argmax(np.abs(ql), axis=-1)
    nl = np.zeros_like(ql)
    np.put_along_axis(nl, axis[:, None], np.sign(np.take_along_axis(ql, axis[:, None], -1)), -1)
    n = _rotate_y(nl, scene.rotation[k])
  elif shape == "cylinder":
    n = np.where((part == 1)[:, None], np.array([0.0, 1.0, 0.0]), q * [1.0, 0.0, 1.0])
  else:
    # Gradient of x^2 + z^2 - k^2 (h - y)^2.
    h = 2 * r
    n = np.stack([q[:, 0], (r / h) ** 2 * (h - q[:, 1]), q[:, 2]], axis=-1)
  return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def _cast(scene: _Scene, o, d):
  """Nearest hit: (t, id, part) with id -1 sky, 0 ground, 1 + k object k."""
  with np.errstate(divide="ignore", invalid="ignore"):
    t_ground = np.where(d[:, 1] < 0, -o[..., 1] / d[:, 1], np.inf)
  t = np.where((t_ground > _EPS) & (t_ground <= GROUND_FAR), t_ground, np.inf)
  ids = np.where(np.isfinite(t), 0, -1)
  part = np.zeros(len(d), np.int8)
  dd = np.einsum("ij,ij->i", d, d)
  for k in range(len(scene.shape)):
    tk, pk = _hit_object(scene, k, o, d, dd=dd)
    closer = tk < t
    t = np.where(closer, tk, t)
    ids = np.where(closer, k + 1, ids)
    part = np.where(closer, pk, part)
  return t, ids, part


def _shadowed(scene: _Scene, p) -> np.ndarray:
  """True where the light is blocked for points p (n, 3)."""
  blocked = np.zeros(len(p), bool)
  pp = np.einsum("ij,ij->i", p, p)
  for k in range(len(scene.shape)):
    t, _ = _hit_object(scene, k, p, scene.light, oo=pp)
    blocked |= np.isfinite(t)
  return blocked


def _shade(scene: _Scene, d, t, ids, part) -> np.ndarray:
  """RGB in [0, 1] of camera rays d with nearest hits (t, ids, part)."""
  rgb = np.empty((len(d), 3))
  hit = np.flatnonzero(ids >= 0)
  sky = np.flatnonzero(ids < 0)
  ds = d[sky]
  up = ds[:, 1] / np.sqrt(np.einsum("ij,ij->i", ds, ds))
  sky_w = np.sqrt(np.clip(up / 0.45, 0, 1))[:, None]
  rgb[sky] = SKY_HORIZON * (1 - sky_w) + SKY_ZENITH * sky_w
  th, hid, hpart = t[hit], ids[hit], part[hit]
  p = scene.cam_pos + th[:, None] * d[hit]
  normal = np.zeros_like(p)
  normal[:, 1] = 1.0  # Ground.
  for k in range(len(scene.shape)):
    sel = np.flatnonzero(hid == k + 1)
    if sel.size:
      normal[sel] = _normal_object(scene, k, p[sel], hpart[sel])
  albedo = np.concatenate([GROUND_ALBEDO[None], ALBEDO[scene.color]])[hid]
  lit = ~_shadowed(scene, p + 1e-4 * normal)
  lambert = np.maximum(normal @ scene.light, 0.0) * lit
  ambient = AMBIENT * (0.75 + 0.25 * normal[:, 1])  # Brighter facing the sky.
  colour = albedo * (ambient + DIFFUSE * lambert)[:, None]
  # A little haze towards the horizon colour with distance.
  fog = (1 - np.exp(-th / 60.0))[:, None]
  rgb[hit] = colour * (1 - fog) + SKY_HORIZON * fog
  return rgb


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
  return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _project(scene: _Scene, p, resolution: int):
  """Pixel coordinates (x, y) and z-depth of world points p (n, 3)."""
  q = (p - scene.cam_pos) @ scene.cam_rot.T  # Camera frame: right, up, forward.
  z = q[:, 2]
  f = resolution / 2 / scene.tan_half_fov
  x = resolution / 2 + f * q[:, 0] / z
  y = resolution / 2 - f * q[:, 1] / z
  return np.stack([x, y], axis=-1), z


# ----------------------------------------------------------------------------
# Captions.


def caption_words(shape: int, color: int, size: int) -> str:
  return f"a {SIZES[size]} {COLORS[color]} {SHAPES[shape]}"


_PHRASE = re.compile(r"\b(?:(%s) )?(%s) (%s)s?\b" % (
    "|".join(SIZES), "|".join(COLORS), "|".join(SHAPES)))


def parse_caption(caption: str) -> list[tuple[int, int, int]]:
  """The objects a caption names: (size, color, shape) ids, size -1 if absent.

  Reads "[size] colour shape" phrases in order, so it also scores generated
  captions, e.g. precision / recall of (colour, shape) pairs against `scene`.
  """
  return [(SIZES.index(z) if z else -1, COLORS.index(c), SHAPES.index(s))
          for z, c, s in _PHRASE.findall(caption.lower())]


def _caption(shape, color, size, center_px, depth, resolution) -> str:
  """Objects in array order (left to right), each related to the next."""
  parts = [caption_words(shape[0], color[0], size[0])]
  for k in range(1, len(shape)):
    if center_px[k, 0] - center_px[k - 1, 0] >= LEFT_OF_FRACTION * resolution:
      rel = "left of"
    elif depth[k - 1] < depth[k]:
      rel = "in front of"
    else:
      rel = "behind"
    parts += [rel, caption_words(shape[k], color[k], size[k])]
  return " ".join(parts)


# ----------------------------------------------------------------------------
# Rendering.


def _find_layout(rng, shape, color, size, res: int):
  """Draws layouts until every object is visible enough; returns the scene
  with its pixel-centre hits (t, ids) and the objects' centres and areas."""
  n = len(shape)
  min_px = max(1, int(round(MIN_VISIBLE_FRACTION * res * res)))
  for _ in range(MAX_ATTEMPTS):
    scene = _sample_layout(rng, shape, color, size)
    if scene is None:
      continue
    t, ids, _ = _cast(scene, scene.cam_pos, _camera_rays(scene, res, 1))
    ids = ids.reshape(res, res)
    centre = scene.position + np.array([0, 1, 0]) * scene.height[:, None] / 2
    center_px, depth_m = _project(scene, centre, res)
    margin = CENTRE_MARGIN * res
    if not np.all((center_px >= margin) & (center_px <= res - margin)) or np.any(depth_m <= 0):
      continue
    area = np.bincount(ids.ravel() + 1, minlength=n + 2)[2:]
    col, row = np.floor(center_px).astype(int).T
    if np.all(area >= min_px) and np.all(ids[row, col] == np.arange(1, n + 1)):
      return scene, t.reshape(res, res), ids, center_px, depth_m, area
  return None


def _sort_left_to_right(scene: _Scene, ids, center_px, depth_m, area):
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
           min_objects: int = 1, max_objects: int = 4, antialias: int = 2) -> dict:
  """Sample `index` of `split`: a raw-sample dict (see the module docstring).

  A pure function of its arguments: the same arguments give bit-identical
  arrays.
  """
  spec = SceneSpec(resolution=resolution, min_objects=min_objects, max_objects=max_objects,
                   seed=seed, antialias=antialias)
  rng = _rng(spec.seed, split, int(index))
  # What is in the scene is drawn once; only where it stands may be redrawn.
  shape, color, size = _sample_objects(rng, spec.min_objects, spec.max_objects)
  n, res = len(shape), spec.resolution
  found = _find_layout(rng, shape, color, size, res)
  if found is None:
    raise RuntimeError(f"scenes: no valid layout for {split} sample {index} "
                       f"after {MAX_ATTEMPTS} attempts (seed {seed}).")
  scene, t, ids, center_px, depth_m, area = found
  ids, center_px, depth_m, area = _sort_left_to_right(scene, ids, center_px, depth_m, area)

  semseg = np.where(ids < 0, SKY, np.where(
      ids == 0, GROUND, FIRST_OBJECT_CLASS + scene.shape[np.maximum(ids, 1) - 1]))
  depth = np.where(np.isfinite(t), t, 0.0)
  a = spec.antialias
  d = _camera_rays(scene, res, a)
  linear = _shade(scene, d, *_cast(scene, scene.cam_pos, d))
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

  return {
      "rgb": _to_uint8(linear),
      "depth": depth.astype(np.float32),
      "semseg": semseg.astype(np.uint8),
      "caption": _caption(scene.shape, scene.color, scene.size, center_px, depth_m, res),
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


# ----------------------------------------------------------------------------
# Storage: ArrayRecord files of msgpack records, one per split.

SPEC_FILE = "spec.json"
RECORD_OPTIONS = "group_size:1,zstd:3"  # group_size 1: fast random access.


def split_path(data_dir: str, split: str) -> str:
  _check_split(split)
  return os.path.join(data_dir, f"{split}.array_record")


def encode(sample: Mapping[str, Any]) -> bytes:
  from flax import serialization  # pylint: disable=g-import-not-at-top
  return serialization.msgpack_serialize(dict(sample))


def decode(record: bytes) -> dict:
  """A stored record back to the sample dict `render` made (writeable arrays)."""
  from flax import serialization  # pylint: disable=g-import-not-at-top

  def own(x):
    if isinstance(x, dict):
      return {k: own(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
      return np.array(x)  # frombuffer views are read-only.
    return x

  return own(serialization.msgpack_restore(record))


def _render_record(job) -> bytes:
  index, split, render_args = job
  return encode(render(index, split=split, **render_args))


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _partial_path(data_dir: str, split: str, pid: int | str) -> str:
  """A writer's temp file: named by host and process, so writers never clash."""
  return os.path.join(data_dir, f".{split}.array_record.partial.{socket.gethostname()}.{pid}")


def _remove_stale_partials(data_dir: str, split: str):
  """Deletes temp files of `split` left by this host's writers that are gone."""
  for path in glob.glob(_partial_path(data_dir, split, "*")):
    try:
      pid = int(path.rsplit(".", 1)[1])
    except ValueError:
      continue
    if pid != os.getpid() and not _pid_alive(pid):
      os.remove(path)


class _Renderer:
  """Maps _render_record over jobs, in order, in this process or a pool."""

  def __init__(self, workers: int = 1):
    self.workers = workers
    self._pool = None

  def __enter__(self):
    if self.workers > 1:
      self._pool = multiprocessing.get_context("spawn").Pool(self.workers)
    return self

  def __exit__(self, *exc):
    if self._pool is not None:
      self._pool.terminate()
      self._pool = None

  def map(self, jobs):
    if self._pool is None:
      return map(_render_record, jobs)
    return self._pool.imap(_render_record, jobs, chunksize=16)


def write_split(data_dir: str, spec: SceneSpec, split: str, *, workers: int = 1,
                progress: bool = True, renderer: _Renderer | None = None) -> dict:
  """Renders and writes one split (temp file, renamed when complete).

  Returns {"samples", "seconds", "samples_per_sec"}.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  if renderer is None:
    with _Renderer(workers) as renderer:
      return write_split(data_dir, spec, split, progress=progress, renderer=renderer)
  _remove_stale_partials(data_dir, split)
  final = split_path(data_dir, split)
  tmp = _partial_path(data_dir, split, os.getpid())
  n = spec.num(split)
  t0 = time.time()
  writer = array_record_module.ArrayRecordWriter(tmp, RECORD_OPTIONS)
  try:
    records = renderer.map((i, split, spec.render_args()) for i in range(n))
    for record in tqdm(records, total=n, desc=f"scenes {split}", unit="sample",
                       disable=not progress, file=sys.stderr, mininterval=1.0):
      writer.write(record)
    writer.close()
    writer = None
    os.replace(tmp, final)
  finally:
    if writer is not None:
      writer.close()
    if os.path.exists(tmp):
      os.remove(tmp)
  seconds = time.time() - t0
  return {"samples": n, "seconds": round(seconds, 2), "samples_per_sec": n / max(seconds, 1e-9)}


def _num_records(path: str) -> int:
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()


def _given_fields(config: Mapping[str, Any] | None) -> list[str]:
  """The SceneSpec fields that `config` sets (not None)."""
  config = config or {}
  return [f.name for f in dataclasses.fields(SceneSpec)
          if f.name in config and config[f.name] is not None]


def _compare_spec(data_dir: str, stored: Mapping[str, Any], spec: SceneSpec,
                  fields: list[str]):
  from m4 import workdir  # pylint: disable=g-import-not-at-top
  wanted = spec.to_json()
  for key in ["renderer_version"] + fields:
    if stored.get(key) != wanted[key]:
      raise workdir.ConfigError(
          f"{data_dir} holds a scenes dataset made with {key}={stored.get(key)!r}, but the"
          f" config asks for {key}={wanted[key]!r}. Use another directory, or delete that"
          " dataset yourself; nothing was changed.")


def ensure(data_dir: str, config: Mapping[str, Any] | None = None, *,
           splits: tuple[str, ...] = SPLITS, progress: bool = True,
           stats: dict | None = None) -> str:
  """Makes the dataset `config` describes in `data_dir`, or reuses it.

  Args:
    data_dir: the dataset directory (created if missing; other files in it are
      left alone).
    config: a data config (ConfigDict or dict) with SceneSpec fields
      (resolution, min_objects, max_objects, seed, antialias, num_train,
      num_validation, num_test) and optionally `workers` (processes that
      render; 1 = this one). Other fields are ignored. A field the config sets
      must match an existing dataset; a field it leaves out (or None) accepts
      what is stored, and takes SceneSpec's default for a new dataset.
    splits: the splits to write if missing (others are only checked).
    progress: show a tqdm bar per split.
    stats: if given, filled with {split: write_split(...) figures} for the
      splits written now.

  Returns:
    data_dir.

  Raises:
    m4.workdir.ConfigError: the directory holds a dataset made with other
      parameters (the message names the field), or split files without a
      spec, or a split with the wrong number of records. Nothing is changed.
  """
  from m4 import workdir  # pylint: disable=g-import-not-at-top
  try:
    spec = SceneSpec.from_config(config)
  except ValueError as e:
    raise workdir.ConfigError(f"config.data: {e}") from None
  workers = (config or {}).get("workers", 1)
  workers = 1 if workers is None else workers
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
    raise workdir.ConfigError(f"config.data.workers: must be an integer >= 1, got {workers!r}.")
  if not data_dir:
    raise workdir.ConfigError("config.data.dir: the scenes dataset needs a directory.")
  os.makedirs(data_dir, exist_ok=True)
  spec_path = os.path.join(data_dir, SPEC_FILE)
  present = [s for s in SPLITS if os.path.exists(split_path(data_dir, s))]
  if os.path.exists(spec_path):
    try:
      stored = workdir.read_json(spec_path)
    except ValueError as e:
      raise workdir.ConfigError(f"{spec_path}: unreadable scenes spec ({e}).") from None
    _compare_spec(data_dir, stored, spec, _given_fields(config))
    spec = _spec_from_json(spec_path, stored)
  elif present:
    raise workdir.ConfigError(
        f"{data_dir} holds {', '.join(s + '.array_record' for s in present)} but no"
        f" {SPEC_FILE}: not a scenes dataset m4 made, or a damaged one. Use another"
        " directory; nothing was changed.")
  else:
    workdir.write_json(spec_path, spec.to_json())
  for split in splits:
    _check_split(split)
  for split in SPLITS:
    _remove_stale_partials(data_dir, split)
  missing = []
  for split in SPLITS:
    path = split_path(data_dir, split)
    if not os.path.exists(path):
      if split in splits:
        missing.append(split)
      continue
    found = _num_records(path)
    if found != spec.num(split):
      raise workdir.ConfigError(
          f"{path} holds {found} records, but {spec_path} says num_{split}="
          f"{spec.num(split)}: the dataset is damaged. Nothing was changed.")
  if missing:
    with _Renderer(workers) as renderer:
      for split in missing:
        figures = write_split(data_dir, spec, split, progress=progress, renderer=renderer)
        if stats is not None:
          stats[split] = figures
  return data_dir


def read_spec(data_dir: str) -> SceneSpec:
  """The SceneSpec of the dataset in `data_dir`."""
  from m4 import workdir  # pylint: disable=g-import-not-at-top
  path = os.path.join(data_dir, SPEC_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {data_dir} is not a scenes dataset (make one with"
        " `python -m m4.data.scenes --out DIR` or scenes.ensure).")
  return _spec_from_json(path, workdir.read_json(path))


def _spec_from_json(path: str, stored: Mapping[str, Any]) -> SceneSpec:
  from m4 import workdir  # pylint: disable=g-import-not-at-top
  try:
    return SceneSpec(**{f.name: stored[f.name] for f in dataclasses.fields(SceneSpec)})
  except (KeyError, TypeError, ValueError) as e:
    raise workdir.ConfigError(f"{path}: not a valid scenes spec ({e!r}).") from None


class ScenesSource:
  """A grain random-access source of one split's raw samples.

      source = ScenesSource("/tmp/scenes", "train")
      len(source), source[0]["rgb"].shape  # (num_train, (64, 64, 3))
  """

  def __init__(self, data_dir: str, split: str):
    import grain  # pylint: disable=g-import-not-at-top
    _check_split(split)
    self.data_dir = data_dir
    self.split = split
    self.spec = read_spec(data_dir)
    path = split_path(data_dir, split)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"{path} not found: the dataset in {data_dir} is incomplete; run"
          " scenes.ensure(data_dir, config) again to finish it.")
    self._source = grain.sources.ArrayRecordDataSource([path])

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return decode(self._source[index])

  def __iter__(self) -> Iterator[dict]:
    for i in range(len(self)):
      yield self[i]

  def __repr__(self) -> str:
    return f"ScenesSource(data_dir={self.data_dir!r}, split={self.split!r}, len={len(self)})"


# ----------------------------------------------------------------------------
# Command line.


def main(argv=None):
  p = argparse.ArgumentParser(
      prog="python -m m4.data.scenes",
      description="Renders the scenes dataset into DIR (train/validation/test ArrayRecord"
      " files + spec.json); an existing dataset with the same parameters is reused.")
  p.add_argument("--out", help="dataset directory")
  p.add_argument("--benchmark", type=int, default=0, metavar="N",
                 help="only time rendering N samples in this process (writes nothing)")
  p.add_argument("--num", type=int, default=SceneSpec.num_train, help="training samples")
  p.add_argument("--num_validation", type=int, default=None,
                 help="validation samples (default: max(1, num // 10))")
  p.add_argument("--num_test", type=int, default=None,
                 help="test samples (default: max(1, num // 10))")
  p.add_argument("--resolution", type=int, default=SceneSpec.resolution)
  p.add_argument("--min_objects", type=int, default=SceneSpec.min_objects)
  p.add_argument("--max_objects", type=int, default=SceneSpec.max_objects)
  p.add_argument("--seed", type=int, default=SceneSpec.seed)
  p.add_argument("--antialias", type=int, default=SceneSpec.antialias)
  p.add_argument("--workers", type=int, default=1, help="rendering processes")
  p.add_argument("--split", action="append", choices=SPLITS,
                 help="write only this split now (repeatable; default: all)")
  args = p.parse_args(argv)
  if args.benchmark:
    render_args = dict(resolution=args.resolution, min_objects=args.min_objects,
                       max_objects=args.max_objects, seed=args.seed, antialias=args.antialias)
    render(0, split="test", **render_args)  # Warm up.
    t0 = time.perf_counter()
    for i in range(args.benchmark):
      render(i, split="test", **render_args)
    seconds = time.perf_counter() - t0
    print(f"rendered {args.benchmark} samples in {seconds:.2f} s: "
          f"{args.benchmark / seconds:.1f} samples/s,"
          f" {1000 * seconds / args.benchmark:.2f} ms/sample "
          f"({render_args})")
    return 0
  if not args.out:
    p.error("--out is required (or --benchmark N)")
  held_out = max(1, args.num // 10)
  config = dict(
      num_train=args.num,
      num_validation=held_out if args.num_validation is None else args.num_validation,
      num_test=held_out if args.num_test is None else args.num_test,
      resolution=args.resolution, min_objects=args.min_objects,
      max_objects=args.max_objects, seed=args.seed, antialias=args.antialias,
      workers=args.workers)
  from m4 import workdir  # pylint: disable=g-import-not-at-top
  stats = {}
  try:
    ensure(args.out, config, splits=tuple(args.split or SPLITS), stats=stats)
  except (workdir.ConfigError, ValueError) as e:
    print(f"m4.data.scenes: error: {e}", file=sys.stderr)
    return 2
  for split in SPLITS:
    if split in stats:
      s = stats[split]
      print(f"{split}: wrote {s['samples']} samples in {s['seconds']:.1f} s"
            f" ({s['samples_per_sec']:.1f} samples/s)")
    elif os.path.exists(split_path(args.out, split)):
      print(f"{split}: {config['num_' + split]} samples, already there")
    else:
      print(f"{split}: not written (--split)")
  print(f"dataset: {os.path.abspath(args.out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
