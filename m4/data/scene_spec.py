"""The scenes vocabulary (shapes, colours, sizes, classes, splits) and SceneSpec,
the generation parameters of a scenes dataset."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections
import numpy as np

SHAPES = ("sphere", "cube", "cylinder", "cone")
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "gray")
SIZES = ("small", "medium", "large")
# Semantic classes: sky, ground, then one class per shape (class = 2 + shape).
CLASSES = ("sky", "ground") + SHAPES
SKY, GROUND, FIRST_OBJECT_CLASS = 0, 1, 2
SPLITS = ("train", "validation", "test")
MAX_OBJECTS_LIMIT = 5  # More do not fit the layout; captions: <= 7 * K - 3 words.
# Optional ground truth a dataset may add to every sample (m4.data.scene_extras).
EXTRAS = ("normals", "instance", "edges", "rgb_edges", "boxes", "palette", "metadata")

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
    extras: names of EXTRAS added to every sample (any order in, EXTRAS order
      kept); () = none, and then spec.json has no `extras` entry, so datasets
      made before extras existed are the same dataset.
  """

  resolution: int = 64
  min_objects: int = 1
  max_objects: int = 4
  seed: int = 0
  antialias: int = 2
  num_train: int = 10000
  num_validation: int = 1000
  num_test: int = 1000
  extras: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "extras", check_extras(self.extras))
    for f in dataclasses.fields(self):
      if f.name == "extras":
        continue
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
    check_split(split)
    return getattr(self, f"num_{split}")

  def render_args(self) -> dict:
    """The keyword arguments of `render` that this spec fixes."""
    return dict(seed=self.seed, resolution=self.resolution, min_objects=self.min_objects,
                max_objects=self.max_objects, antialias=self.antialias, extras=self.extras)

  def to_json(self) -> dict:
    """spec.json's contents; `extras` only when there are any."""
    fields = dataclasses.asdict(self)
    extras = fields.pop("extras")
    return {"renderer_version": RENDERER_VERSION, **fields,
            **({"extras": list(extras)} if extras else {}),
            "classes": list(CLASSES), "shapes": list(SHAPES), "colors": list(COLORS),
            "sizes": list(SIZES)}

  @classmethod
  def given(cls, config: Mapping[str, Any] | None) -> dict:
    """The spec fields a data config sets (not None); other fields are ignored."""
    config = config or {}
    return {f.name: config[f.name] for f in dataclasses.fields(cls)
            if f.name in config and config[f.name] is not None}

  @classmethod
  def from_config(cls, config: Mapping[str, Any] | None) -> "SceneSpec":
    """The spec named by a data config's fields (defaults for the others)."""
    return cls(**cls.given(config))


def default_config():
  """The data config of a scenes dataset, for configs to start from."""
  return ml_collections.ConfigDict({
      "kind": "scenes", "dir": "", "workers": 1,
      **dataclasses.asdict(SceneSpec())})


def check_extras(extras) -> tuple[str, ...]:
  """`extras` as a tuple of known EXTRAS names, in EXTRAS order."""
  if not isinstance(extras, (tuple, list)) or not all(isinstance(e, str) for e in extras):
    raise ValueError(f"scenes: extras must be a tuple of names of {EXTRAS}, got {extras!r}.")
  unknown = sorted(set(extras) - set(EXTRAS))
  if unknown:
    raise ValueError(f"scenes: unknown extras {unknown}; known: {EXTRAS}.")
  return tuple(e for e in EXTRAS if e in extras)


def check_split(split: str):
  if split not in SPLITS:
    raise ValueError(f"scenes: unknown split {split!r}; splits: {SPLITS}.")

