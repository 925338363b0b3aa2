"""One geometry for every modality of a sample, and per-modality value scales.

    crop = transforms.AlignedCrop(size=(64, 64), crop_scale=(0.6, 1.0), flip=True)
    out = crop(raw_sample, np.random.default_rng(0))   # or ds.random_map(crop)

`AlignedCrop` picks one crop box and one flip per sample and applies them to
every image-like key, so the modalities stay pixel-aligned:

  * rgb:    antialiased bilinear (PIL), uint8 -> float32 in [0, 1];
  * depth:  nearest neighbour (never blends depth across object edges),
            float32 metres, 0 = invalid;
  * semseg: nearest neighbour, int32 class ids, 255 = unlabelled;
  * the scenes extras (EXTRA_IMAGE_KEYS, m4.data.scene_extras): nearest
    neighbour, dtypes kept; a flip negates the normals' x (right) component.

Both samplers map output pixel (i, j) to the same source point
`box_origin + (index + 0.5) * box_size / out_size`, so an output pixel of
depth or semseg is the source pixel under the centre of the matching rgb
pixel. Flipped captions have "left" and "right" swapped, and the pixel
quantities in `scene` and `boxes` (keys ending in `_px`, see `_move_points`)
follow the crop, resize and flip; boxes, palette and metadata get their
texts (`<kind>_text`, m4.data.scene_sequences) after it. Everything else
passes through.

Value scales: m4.value_scales.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import grain
import numpy as np
from PIL import Image

from m4.data import scene_sequences
from m4.value_scales import IMAGE_KEYS

# Image-like keys a scenes dataset may add (SceneSpec.extras).
EXTRA_IMAGE_KEYS = ("normals", "instance", "edges", "rgb_edges")


def to_contract(sample: Mapping[str, Any]) -> dict:
  """Raw dtypes -> transformed dtypes (rgb float [0, 1], semseg int32)."""
  out = dict(sample)
  if "rgb" in out:
    out["rgb"] = np.asarray(out["rgb"], np.float32) / np.float32(255.0)
  if "depth" in out:
    out["depth"] = np.asarray(out["depth"], np.float32)
  if "semseg" in out:
    out["semseg"] = np.asarray(out["semseg"], np.int32)
  return out


def _image_size(sample: Mapping[str, Any]) -> tuple[int, int]:
  sizes = {k: np.shape(sample[k])[:2] for k in IMAGE_KEYS + EXTRA_IMAGE_KEYS if k in sample}
  if not sizes:
    raise ValueError(f"sample {sample.get('id')}: no image key among {IMAGE_KEYS}"
                     f" (keys: {sorted(sample)}).")
  if len(set(sizes.values())) > 1:
    raise ValueError(f"sample {sample.get('id')}: image modalities differ in size: {sizes}.")
  return next(iter(sizes.values()))


def _box_size(area: float, ratio: float) -> tuple[int, int]:
  """(h, w) of a box of this area and aspect ratio (w / h), in whole pixels."""
  return int(round(math.sqrt(area / ratio))), int(round(math.sqrt(area * ratio)))


_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def swap_left_right(text: str) -> str:
  """The caption of the mirrored image: "left" <-> "right" as whole words."""
  return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def _nearest(image, rows, cols, *, flip_x: bool = False) -> np.ndarray:
  """image[rows][:, cols], its dtype kept; flip_x negates channel 0 (a normal's x)."""
  out = np.asarray(image)[rows][:, cols]
  if flip_x:
    out = out.copy()
    out[..., 0] = 0 - out[..., 0]  # Not -x: sky's 0 stays +0.
  return out


class AlignedCrop(grain.transforms.RandomMap):
  """Random crop + resize + horizontal flip, identical for every modality.

  Training (`random=True`): the crop covers a fraction in `crop_scale` of the
  image area, with aspect ratio (relative to the output's) in `crop_ratio`,
  log-uniform; it is mirrored with probability 0.5 when `flip`. Ten draws are
  tried; if none fits, the central crop is taken. Evaluation (`random=False`):
  the largest central crop with the output's aspect ratio, never flipped.
  """

  def __init__(self, size: Sequence[int], *, crop_scale: Sequence[float] = (1.0, 1.0),
               crop_ratio: Sequence[float] = (1.0, 1.0), flip: bool = False,
               random: bool = True):
    size = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
      raise ValueError(f"image_size must be a positive int or (h, w), got {size}.")
    lo, hi = (float(v) for v in crop_scale)
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {tuple(crop_scale)}.")
    rlo, rhi = (float(v) for v in crop_ratio)
    if not 0 < rlo <= rhi:
      raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {tuple(crop_ratio)}.")
    self.size = size
    self.crop_scale = (lo, hi)
    self.crop_ratio = (rlo, rhi)
    self.flip = bool(flip)
    self.random = bool(random)

  def crop_box(self, height: int, width: int, rng: np.random.Generator | None):
    """(y0, x0, h, w, flipped) of the crop for an image of this size."""
    out_h, out_w = self.size
    aspect = out_w / out_h
    if self.random and rng is not None:
      log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
      for _ in range(10):
        area = height * width * rng.uniform(*self.crop_scale)
        h, w = _box_size(area, aspect * math.exp(rng.uniform(log_lo, log_hi)))
        if 0 < w <= width and 0 < h <= height:
          y0 = int(rng.integers(0, height - h + 1))
          x0 = int(rng.integers(0, width - w + 1))
          flipped = self.flip and bool(rng.random() < 0.5)
          return y0, x0, h, w, flipped
    w = min(width, max(1, int(round(height * aspect))))
    h = min(height, max(1, int(round(w / aspect))))
    flipped = self.random and rng is not None and self.flip and bool(rng.random() < 0.5)
    return (height - h) // 2, (width - w) // 2, h, w, flipped

  def random_map(self, element, rng: np.random.Generator):
    return self.apply(element, rng if self.random else None)

  def __call__(self, element, rng: np.random.Generator | None = None):
    return self.apply(element, rng)

  def apply(self, sample: Mapping[str, Any], rng: np.random.Generator | None) -> dict:
    return self.crop(sample, self.crop_box(*_image_size(sample), rng))

  @property
  def fixed(self) -> bool:
    """Whether every training crop is the central one (only the flip is random)."""
    return self.crop_scale == (1.0, 1.0) and self.crop_ratio == (1.0, 1.0)

  def views(self, sample: Mapping[str, Any]) -> list[dict]:
    """Every output a `fixed` crop can give: [central] or [central, mirrored].

    ValueError where a training crop could move: a random crop, or an image
    whose aspect ratio is the output's up to rounding (the full-area box then
    fits with a pixel to spare and the training crop may shift by it).
    """
    if not self.fixed:
      raise ValueError(f"views: the crop is random (crop_scale {self.crop_scale}, crop_ratio"
                       f" {self.crop_ratio}); only a fixed one has a finite set of views.")
    height, width = _image_size(sample)
    h, w = _box_size(height * width, self.size[1] / self.size[0])  # The full-area draw.
    if self.random and 0 < w <= width and 0 < h <= height and (h, w) != (height, width):
      raise ValueError(f"views: sample {sample.get('id')}'s training crop ({h}x{w} of"
                       f" {height}x{width}) may shift within the image; no finite set of views.")
    y0, x0, h, w, _ = self.crop_box(height, width, None)
    flips = (False, True) if self.flip and self.random else (False,)
    return [self.crop(sample, (y0, x0, h, w, flipped)) for flipped in flips]

  def crop(self, sample: Mapping[str, Any], box) -> dict:
    """The sample through one box (y0, x0, h, w, flipped) of `crop_box`."""
    height, width = _image_size(sample)
    y0, x0, h, w, flipped = box
    out_h, out_w = self.size
    # Source pixel under the centre of each output pixel (nearest neighbour).
    rows = np.minimum(y0 + ((np.arange(out_h) + 0.5) * (h / out_h)).astype(np.int64), height - 1)
    cols = np.minimum(x0 + ((np.arange(out_w) + 0.5) * (w / out_w)).astype(np.int64), width - 1)
    if flipped:
      cols = cols[::-1]
    out = dict(sample)
    if "rgb" in sample:
      rgb = Image.fromarray(np.asarray(sample["rgb"], np.uint8))
      rgb = np.asarray(rgb.resize((out_w, out_h), Image.BILINEAR, box=(x0, y0, x0 + w, y0 + h)))
      if flipped:
        rgb = rgb[:, ::-1]
      out["rgb"] = rgb.astype(np.float32) / np.float32(255)
    if "depth" in sample:
      out["depth"] = np.asarray(sample["depth"])[rows][:, cols].astype(np.float32)
    if "semseg" in sample:
      out["semseg"] = np.asarray(sample["semseg"])[rows][:, cols].astype(np.int32)
    for key in EXTRA_IMAGE_KEYS:
      if key in sample:
        out[key] = _nearest(sample[key], rows, cols, flip_x=flipped and key == "normals")
    if flipped and "caption" in sample:
      out["caption"] = swap_left_right(str(sample["caption"]))
    for key in ("scene", "boxes"):
      if key in sample:
        out[key] = self._move_points(sample[key], (y0, x0, h, w, flipped))
    if any(key in sample for key in scene_sequences.SOURCES.values()):
      out = scene_sequences.add_texts(out, self.size)  # Boxes in output pixels.
    return out

  def _move_points(self, scene: Mapping[str, Any], box) -> dict:
    """The pixel quantities of `scene` (keys ending in `_px`) through the crop.

    Coordinates are continuous (pixel (r, c) covers [c, c+1) x [r, r+1)),
    (x, y) order; -1 entries are padding and stay -1. By key: "*box*"
    (..., 4) boxes (x0, y0, x1, y1) are mapped and clipped to the image;
    "area*" values scale with the pixel area; other (..., 2) arrays are
    points (which may fall outside the crop); the rest are lengths (e.g.
    focal_px), scaled by the geometric mean of the two resize factors. Areas
    are not reduced for the part of an object a crop cuts off.
    """
    y0, x0, h, w, flipped = box
    out_h, out_w = self.size
    sx, sy = out_w / w, out_h / h
    scene = dict(scene)
    for key, value in scene.items():
      if not key.endswith("_px"):
        continue
      v = np.asarray(value, np.float32)
      if "area" in key:
        new, pad = v * (sx * sy), v == -1
      elif "box" in key:
        pad = np.all(v == -1, axis=-1, keepdims=True)
        bx0, by0, bx1, by1 = ((v[..., i] - o) * s for i, o, s in
                              ((0, x0, sx), (1, y0, sy), (2, x0, sx), (3, y0, sy)))
        if flipped:
          bx0, bx1 = out_w - bx1, out_w - bx0
        new = np.stack([np.clip(bx0, 0, out_w), np.clip(by0, 0, out_h),
                        np.clip(bx1, 0, out_w), np.clip(by1, 0, out_h)], -1)
      elif v.ndim >= 2 and v.shape[-1] == 2:
        pad = np.all(v == -1, axis=-1, keepdims=True)
        x, y = (v[..., 0] - x0) * sx, (v[..., 1] - y0) * sy
        new = np.stack([out_w - x if flipped else x, y], -1)
      else:
        new, pad = v * np.sqrt(sx * sy), v == -1
      scene[key] = np.where(pad, np.float32(-1), new).astype(np.float32)
    return scene
