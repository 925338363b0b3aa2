"""Per-modality value scales: raw units <-> the scale models and tokenizers read.

    x = value_scales.normalize("depth", depth_m)          # numpy or jax
    depth_m = value_scales.denormalize("depth", x)

  * rgb:    [0, 1] -> [-1, 1].
  * depth:  metres -> (ln(clip(d, DEPTH_MIN_M, DEPTH_MAX_M)) - LOG_DEPTH_MEAN)
            / LOG_DEPTH_STD, about [-3.9, 3.0]; invalid depth (0, negative or
            not finite) -> DEPTH_INVALID (-6), far below every valid value.
            `denormalize` returns 0 (invalid) for values below
            DEPTH_INVALID_BELOW (-5), so a model can predict "no depth" (e.g.
            sky) and it survives the round trip.
  * semseg: class ids, unchanged.

`pixels` gives a `pixels` input its values ("symmetric" or "imagenet").
numpy and jax only, so data, tokenizers, models and evaluators share them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from m4 import modalities

IMAGE_KEYS = ("rgb", "depth", "semseg")
SEMSEG_IGNORE = 255

DEPTH_MIN_M = 0.1
DEPTH_MAX_M = 100.0
LOG_DEPTH_MEAN = math.log(5.0)  # 5 m maps to 0.
LOG_DEPTH_STD = 1.0  # One unit per factor e (2.7x) in distance.
DEPTH_INVALID = -6.0
DEPTH_INVALID_BELOW = -5.0


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def _data_key(modality: str) -> str:
  """The raw key of `modality` ("rgb" for a registered "rgb@224", ...)."""
  if modality in IMAGE_KEYS:
    return modality
  try:
    key = modalities.get(modality).data_key
  except KeyError:
    key = None
  if key not in IMAGE_KEYS:
    raise ValueError(f"normalize/denormalize: modality {modality!r} has no value scale;"
                     f" known: {IMAGE_KEYS} (or registered modalities made from them).")
  return key


def depth_valid(depth, *, normalized: bool = False):
  """Boolean mask of valid depth, in metres or (normalized=True) normalised."""
  xp = _xp(depth)
  if normalized:
    return depth >= DEPTH_INVALID_BELOW
  return xp.isfinite(depth) & (depth > 0)


def normalize(modality: str, x):
  """Raw units (per the data contract) -> the model's scale. See module doc."""
  key = _data_key(modality)
  xp = _xp(x)
  if key == "rgb":
    return xp.asarray(x, xp.float32) * 2.0 - 1.0
  if key == "depth":
    x = xp.asarray(x, xp.float32)
    valid = depth_valid(x)
    d = xp.clip(xp.where(valid, x, 1.0), DEPTH_MIN_M, DEPTH_MAX_M)
    z = (xp.log(d) - LOG_DEPTH_MEAN) / LOG_DEPTH_STD
    return xp.where(valid, z, DEPTH_INVALID).astype(xp.float32)
  return xp.asarray(x, xp.int32)  # semseg


PIXEL_NORMALIZATIONS = ("symmetric", "imagenet")
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def pixels(images, normalization: str = "symmetric") -> np.ndarray:
  """RGB images (uint8, or float in [0, 1]) -> float32 pixels for a `pixels` input.

  "symmetric": [0, 1] -> [-1, 1] (as `normalize("rgb", ...)`); "imagenet":
  (x - mean) / std per channel, as 4M's rgb@224 input.
  """
  if normalization not in PIXEL_NORMALIZATIONS:
    raise ValueError(f"pixel normalization {normalization!r} is not one of"
                     f" {PIXEL_NORMALIZATIONS}.")
  x = np.asarray(images)
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  if normalization == "imagenet":
    return (x - _IMAGENET_MEAN) / _IMAGENET_STD
  return x * 2.0 - 1.0


def denormalize(modality: str, x):
  """The model's scale -> raw units; rgb is clipped to [0, 1]."""
  key = _data_key(modality)
  xp = _xp(x)
  if key == "rgb":
    return xp.clip((xp.asarray(x, xp.float32) + 1.0) * 0.5, 0.0, 1.0)
  if key == "depth":
    x = xp.asarray(x, xp.float32)
    d = xp.exp(xp.clip(x * LOG_DEPTH_STD + LOG_DEPTH_MEAN,
                       math.log(DEPTH_MIN_M), math.log(DEPTH_MAX_M)))
    return xp.where(x >= DEPTH_INVALID_BELOW, d, 0.0).astype(xp.float32)
  return xp.asarray(x, xp.int32)
