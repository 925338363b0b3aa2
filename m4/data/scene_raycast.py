"""Ray casting of a Scene: analytic intersections, shading and shadows.

Rays are (origin O, direction D) with D's component along the camera's forward
axis equal to 1 for camera rays, so the hit parameter t is the z-depth. Every
intersector returns (t, part): t = inf where missed.
"""

from __future__ import annotations

import numpy as np

from m4.data.scene_graph import CUBE_HALF, Scene, footprint
from m4.data.scene_spec import SHAPES

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
AMBIENT, DIFFUSE = 0.42, 0.68
# The ground ends GROUND_FAR metres (z-depth) from the camera: beyond is sky,
# so every valid depth is finite and at most GROUND_FAR.
GROUND_FAR = 25.0
_EPS = 1e-6


def camera_space_rays(n: int, tan_half_fov: float) -> np.ndarray:
  """(n, n, 3) ray directions of an n x n pixel grid in camera space: x right,
  y up, forward = 1 (pixel centres, row-major from the top left)."""
  c = (np.arange(n) + 0.5) / n * 2 - 1  # Pixel centres in [-1, 1].
  return np.stack(np.broadcast_arrays(c[None, :] * tan_half_fov, -c[:, None] * tan_half_fov,
                                      np.ones((n, n))), -1)


def camera_rays(scene: Scene, resolution: int, samples: int) -> np.ndarray:
  """World directions (resolution * samples)^2 x 3, row-major over sub-pixels."""
  cam = camera_space_rays(resolution * samples, scene.tan_half_fov)
  right, up, forward = scene.cam_rot
  d = cam[..., 2:] * forward + cam[..., :1] * right + cam[..., 1:2] * up
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


def _hit_object(scene: Scene, k: int, o, d, dd=None, oo=None):
  """(t, part) of rays with object k: one origin o (3,) and directions d (n, 3)
  (dd: their squared norms), or origins o (n, 3) (oo: their squared norms) and
  one unit direction d (3,).

  Only rays that meet the object's bounding sphere are intersected exactly.
  """
  h = float(scene.height[k])
  centre = scene.position[k] + [0.0, h / 2, 0.0]
  radius2 = float(footprint(scene.shape[k], scene.size[k])) ** 2 + (h / 2) ** 2
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


def _hit_object_exact(scene: Scene, k: int, o, d):
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


def _normal_object(scene: Scene, k: int, p, part):
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


def surface_normals(scene: Scene, p, ids, part) -> np.ndarray:
  """Unit world-space normals at hit points p (n, 3) with cast's ids (>= 0)
  and parts: the ground's is +y."""
  normal = np.zeros_like(p)
  normal[:, 1] = 1.0  # Ground.
  for k in range(len(scene.shape)):
    sel = np.flatnonzero(ids == k + 1)
    if sel.size:
      normal[sel] = _normal_object(scene, k, p[sel], part[sel])
  return normal


def cast(scene: Scene, o, d):
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


def _shadowed(scene: Scene, p) -> np.ndarray:
  """True where the light is blocked for points p (n, 3)."""
  blocked = np.zeros(len(p), bool)
  pp = np.einsum("ij,ij->i", p, p)
  for k in range(len(scene.shape)):
    t, _ = _hit_object(scene, k, p, scene.light, oo=pp)
    blocked |= np.isfinite(t)
  return blocked


def shade(scene: Scene, d, t, ids, part) -> np.ndarray:
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
  normal = surface_normals(scene, p, hid, hpart)
  albedo = np.concatenate([GROUND_ALBEDO[None], ALBEDO[scene.color]])[hid]
  lit = ~_shadowed(scene, p + 1e-4 * normal)
  lambert = np.maximum(normal @ scene.light, 0.0) * lit
  ambient = AMBIENT * (0.75 + 0.25 * normal[:, 1])  # Brighter facing the sky.
  colour = albedo * (ambient + DIFFUSE * lambert)[:, None]
  # A little haze towards the horizon colour with distance.
  fog = (1 - np.exp(-th / 60.0))[:, None]
  rgb[hit] = colour * (1 - fog) + SKY_HORIZON * fog
  return rgb


def to_uint8(rgb: np.ndarray) -> np.ndarray:
  return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def project(scene: Scene, p, resolution: int):
  """Pixel coordinates (x, y) and z-depth of world points p (n, 3)."""
  q = (p - scene.cam_pos) @ scene.cam_rot.T  # Camera frame: right, up, forward.
  z = q[:, 2]
  f = resolution / 2 / scene.tan_half_fov
  x = resolution / 2 + f * q[:, 0] / z
  y = resolution / 2 - f * q[:, 1] / z
  return np.stack([x, y], axis=-1), z
