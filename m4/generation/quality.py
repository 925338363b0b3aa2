"""Quality of generated modalities on scenes: additive sums, then figures.

    sums = quality.Sums()
    sums.add("rgb->depth", depth_io.metric_sums(output, gt_depth, valid))
    sums.add("rgb->caption", quality.caption_pair_sums(texts, batch["scene"], valid))
    sums.add("caption->semseg", quality.presence_sums(semseg, captions, valid))
    figures = sums.figures({"rgb->depth": depth_io.metrics_from_sums, ...})

Image figures come from the VQ tokenizers' own `metric_sums` (depth abs-rel
and delta1 over valid ground-truth pixels, semseg mIoU), so generated images
and the tokenizer's reconstruction (the ceiling) are scored by the same code.

  caption pairs   the (shape, colour) pairs a caption names
                  (`scenes.parse_caption`) against the scene's objects, as
                  multisets: precision = matched / named, recall = matched /
                  objects, summed over samples (micro average), and F1.
  object presence the shape classes present in a semantic map (at least
                  `min_pixels` pixels) against the shapes a caption names:
                  F1 over (sample, shape) pairs, with precision and recall.
"""

from __future__ import annotations

import collections
from typing import Callable, Mapping, Sequence

import numpy as np

from m4.data import scenes

PRESENCE_MIN_PIXELS = 8  # A shape counts as present from this many pixels (64 px maps).


def caption_pair_sums(captions: Sequence[str], scene: Mapping[str, np.ndarray],
                      valid: np.ndarray) -> dict[str, float]:
  """Matched / named / actual (shape, colour) pairs of `captions` vs `scene`.

  `scene` holds the batch's padded "shape" and "color" ids (B, K), -1 padding.
  """
  shape, color = np.asarray(scene["shape"]), np.asarray(scene["color"])
  out = {"matched": 0.0, "named": 0.0, "objects": 0.0}
  for b, text in enumerate(captions):
    if not valid[b]:
      continue
    named = collections.Counter((s, c) for _, c, s in scenes.parse_caption(str(text)))
    real = collections.Counter((int(s), int(c)) for s, c in zip(shape[b], color[b]) if s >= 0)
    out["matched"] += sum((named & real).values())
    out["named"] += sum(named.values())
    out["objects"] += sum(real.values())
  return out


def presence_sums(semseg: np.ndarray, captions: Sequence[str], valid: np.ndarray,
                  min_pixels: int = PRESENCE_MIN_PIXELS) -> dict[str, float]:
  """True / false positives and false negatives of the shape classes present
  in `semseg` (B, H, W) against the shapes each caption names."""
  semseg = np.asarray(semseg)
  num_shapes = len(scenes.SHAPES)
  first = scenes.CLASSES.index(scenes.SHAPES[0])
  out = {"tp": 0.0, "fp": 0.0, "fn": 0.0}
  for b, text in enumerate(captions):
    if not valid[b]:
      continue
    pixels = np.bincount(semseg[b].reshape(-1).astype(np.int64).clip(0, 255), minlength=256)
    present = pixels[first:first + num_shapes] >= min_pixels
    named = np.zeros(num_shapes, bool)
    for _, _, s in scenes.parse_caption(str(text)):
      named[s] = True
    out["tp"] += float(np.sum(present & named))
    out["fp"] += float(np.sum(present & ~named))
    out["fn"] += float(np.sum(~present & named))
  return out


def _ratio(a: float, b: float) -> float:
  return float(a) / float(b) if b else 0.0


def _f1(p: float, r: float) -> float:
  return 2 * p * r / (p + r) if p + r else 0.0


def caption_pair_figures(sums: Mapping[str, float]) -> dict[str, float]:
  p = _ratio(sums["matched"], sums["named"])
  r = _ratio(sums["matched"], sums["objects"])
  return {"pair_precision": p, "pair_recall": r, "pair_f1": _f1(p, r)}


def presence_figures(sums: Mapping[str, float]) -> dict[str, float]:
  p = _ratio(sums["tp"], sums["tp"] + sums["fp"])
  r = _ratio(sums["tp"], sums["tp"] + sums["fn"])
  return {"presence_precision": p, "presence_recall": r, "presence_f1": _f1(p, r)}


class Sums:
  """Named additive sums (numpy or jax scalars / arrays), accumulated per batch."""

  def __init__(self):
    self.sums: dict[str, dict[str, np.ndarray]] = {}

  def add(self, name: str, sums: Mapping[str, object]):
    sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
    if name not in self.sums:
      self.sums[name] = sums
    else:
      for k, v in sums.items():
        self.sums[name][k] = self.sums[name][k] + v

  def figures(self, finalize: Mapping[str, Callable[[Mapping], dict]]) -> dict[str, dict]:
    """{name: finalize[name](sums)} for every name added."""
    return {name: finalize[name](s) for name, s in self.sums.items()}
