"""Scene sampling: the objects of a scene, their layout, the camera and the sun.

A scene is drawn from a numpy Generator seeded by (seed, split, index), so it
is a pure function of them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from m4.data.scene_spec import COLORS, SHAPES, SIZES, SPLITS, check_split

# Radius (metres) of the object's footprint per size; heights are 2x radius.
SIZE_RADIUS = np.array([0.5, 0.7, 0.92])
CUBE_HALF = 0.8  # A cube's half side, as a fraction of its size's radius.

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
GAP = 0.12  # Minimal free space between two objects' footprints.


@dataclasses.dataclass
class Scene:
  """One scene: n objects (shape, colour and size ids), camera and light."""

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


def rng_for(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of sample `index` of `split`; splits draw disjoint streams."""
  check_split(split)
  if index < 0:
    raise IndexError(f"scenes: index must be >= 0, got {index}.")
  return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def sample_objects(rng, min_objects: int, max_objects: int):
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


def footprint(shape, size) -> np.ndarray:
  """Radius of the circle that holds each object's footprint, any rotation."""
  r = SIZE_RADIUS[size]
  return np.where(shape == SHAPES.index("cube"), CUBE_HALF * np.sqrt(2) * r, r)


def sample_layout(rng, shape, color, size) -> Scene | None:
  """Camera, light and non-overlapping positions; None if packing failed."""
  azimuth = rng.uniform(0, 2 * np.pi)
  elevation = np.deg2rad(rng.uniform(*ELEVATION_DEG))
  distance = rng.uniform(*DISTANCE)
  centre = np.array([rng.uniform(-0.3, 0.3), 0.0, rng.uniform(-0.3, 0.3)])
  tan = np.tan(np.deg2rad(FOV_DEG) / 2)
  near, far = LAYOUT_DEPTH
  area = (far - near) * 2 * LAYOUT_LATERAL * tan * (distance * np.cos(elevation)
                                                      + (near + far) / 2)
  foot = footprint(shape, size)
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
  return Scene(shape=shape, color=color, size=size, position=position, rotation=rotation,
               cam_pos=cam_pos, cam_rot=np.stack([right, up, forward]),
               tan_half_fov=float(np.tan(np.deg2rad(FOV_DEG) / 2)), light=light)

