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
                  objects, summed over samples (micro average), and F1; the
                  same for the shapes alone (shape_*).
  object presence the shape classes present in a semantic map (at least
                  `min_pixels` pixels) against the shapes a caption names:
                  F1 over (sample, shape) pairs, with precision and recall.
  boxes           steering by boxes: each requested box (a boxes text, m4.data.
                  scene_sequences) against the objects of a generated map
                  (connected regions of one shape class, at least
                  `min_pixels`): the best IoU of a region of its class, the
                  share of boxes with IoU >= 0.5 (hit rate) and the mean IoU.
  box texts       generated boxes texts against the true ones: a generated
                  box matches an unmatched true box of its class at IoU >= 0.5
                  (greedy, best IoU first); precision, recall, F1; a text that
                  does not parse names no boxes.
  count           steering by metadata: the objects of a generated map
                  (regions as above) against the count a metadata text asks
                  for: accuracy and mean absolute error.
  palette         steering by a palette: each colour a palette text asks for
                  against the nearest of the generated RGB's own dominant
                  colours (m4.data.scene_extras.palette), as RGB distance in
                  0-255 units, weighted by the colour's share.
"""

from __future__ import annotations

import collections
from typing import Callable, Mapping, Sequence

import numpy as np

from scipy import ndimage

from m4.data import scene_extras
from m4.data import scene_sequences
from m4.data import scenes

PRESENCE_MIN_PIXELS = 8  # A shape counts as present from this many pixels (64 px maps).


def caption_pair_sums(captions: Sequence[str], scene: Mapping[str, np.ndarray],
                      valid: np.ndarray) -> dict[str, float]:
  """Matched / named / actual (shape, colour) pairs of `captions` vs `scene`,
  and the pairs whose shape alone matches (`shapes_matched`: what an input
  without colour, such as depth, can get right).

  `scene` holds the batch's padded "shape" and "color" ids (B, K), -1 padding.
  """
  shape, color = np.asarray(scene["shape"]), np.asarray(scene["color"])
  out = {"matched": 0.0, "shapes_matched": 0.0, "named": 0.0, "objects": 0.0}
  for b, text in enumerate(captions):
    if not valid[b]:
      continue
    named = [(s, c) for _, c, s in scenes.parse_caption(str(text))]
    real = [(int(s), int(c)) for s, c in zip(shape[b], color[b]) if s >= 0]
    out["matched"] += _common(named, real)
    out["shapes_matched"] += _common([s for s, _ in named], [s for s, _ in real])
    out["named"] += len(named)
    out["objects"] += len(real)
  return out


def _common(a: Sequence, b: Sequence) -> int:
  """The size of the multisets' intersection."""
  return sum((collections.Counter(a) & collections.Counter(b)).values())


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


def objects(semseg: np.ndarray, min_pixels: int = PRESENCE_MIN_PIXELS) -> list[tuple[int, tuple]]:
  """(class id, (x0, y0, x1, y1) exclusive) of each object region of one map:
  4-connected pixels of one shape class, at least `min_pixels` of them."""
  semseg = np.asarray(semseg)
  first = scenes.CLASSES.index(scenes.SHAPES[0])
  out = []
  for c in range(first, first + len(scenes.SHAPES)):
    labels, n = ndimage.label(semseg == c)
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
      if sl is not None and np.sum(labels[sl] == k) >= min_pixels:
        out.append((c, (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)))
  return out


def _iou(a, b) -> float:
  w = min(a[2], b[2]) - max(a[0], b[0])
  h = min(a[3], b[3]) - max(a[1], b[1])
  inter = max(0.0, w) * max(0.0, h)
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return float(inter / union) if union > 0 else 0.0


def _boxes(text: str, image_size) -> list[tuple[int, tuple]]:
  """(class id, box in pixels) of a boxes text; [] if it does not parse."""
  try:
    q = scene_sequences.from_text("boxes", str(text))
  except ValueError:
    return []
  h, w = image_size
  scale = np.array([w, h, w, h], np.float64) / scene_sequences.COORD_BINS
  return [(c, tuple(np.asarray(b) * scale)) for c, b in zip(q["class"], q["bbox"])]


def box_sums(semseg: np.ndarray, boxes_texts: Sequence[str], valid: np.ndarray,
             min_pixels: int = PRESENCE_MIN_PIXELS) -> dict[str, float]:
  """Requested boxes (texts) hit by the object regions of `semseg` (B, H, W)."""
  semseg = np.asarray(semseg)
  out = {"hits": 0.0, "iou": 0.0, "boxes": 0.0}
  for b, text in enumerate(boxes_texts):
    if not valid[b]:
      continue
    found = objects(semseg[b], min_pixels)
    for c, box in _boxes(text, semseg.shape[1:3]):
      best = max([_iou(box, r) for k, r in found if k == c], default=0.0)
      out["hits"] += float(best >= 0.5)
      out["iou"] += best
      out["boxes"] += 1.0
  return out


def box_figures(sums: Mapping[str, float]) -> dict[str, float]:
  return {"box_hit_rate": _ratio(sums["hits"], sums["boxes"]),
          "box_mean_iou": _ratio(sums["iou"], sums["boxes"])}


def text_match_sums(kind: str, generated: Sequence[str], truth: Sequence[str],
                    valid: np.ndarray) -> dict[str, float]:
  """Generated boxes or instances texts matched one to one to the true ones:
  same class and IoU >= 0.5 of the boxes, or of the masks (in the texts' own
  coordinate bins)."""
  bins = (scene_sequences.COORD_BINS,) * 2
  out = {"matched": 0.0, "named": 0.0, "objects": 0.0}
  for b, (gen, true) in enumerate(zip(generated, truth)):
    if not valid[b]:
      continue
    g = scene_sequences.regions(kind, str(gen), bins)
    t = scene_sequences.regions(kind, str(true), bins)
    pairs = sorted(((_mask_iou(gm, tm), i, j) for i, (gc, gm) in enumerate(g)
                    for j, (tc, tm) in enumerate(t) if gc == tc), reverse=True)
    used_g, used_t = set(), set()
    for iou, i, j in pairs:
      if iou >= 0.5 and i not in used_g and j not in used_t:
        used_g.add(i)
        used_t.add(j)
    out["matched"] += len(used_g)
    out["named"] += len(g)
    out["objects"] += len(t)
  return out


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
  union = np.sum(a | b)
  return float(np.sum(a & b) / union) if union else 0.0


def count_sums(semseg: np.ndarray, metadata_texts: Sequence[str], valid: np.ndarray,
               min_pixels: int = PRESENCE_MIN_PIXELS) -> dict[str, float]:
  """Object regions of `semseg` (B, H, W) against the metadata texts' count."""
  semseg = np.asarray(semseg)
  counts = [len(objects(semseg[b], min_pixels)) if valid[b] else 0 for b in range(len(semseg))]
  return count_match_sums(counts, metadata_texts, valid)


def count_match_sums(counts: Sequence[int], metadata_texts: Sequence[str],
                     valid: np.ndarray) -> dict[str, float]:
  """Counts (one per sample: objects drawn, boxes written) against the
  metadata texts' count."""
  out = {"match": 0.0, "abs_error": 0.0, "samples": 0.0}
  for b, text in enumerate(metadata_texts):
    if not valid[b]:
      continue
    want = scene_sequences.from_text("metadata", str(text))["count"]
    out["match"] += float(counts[b] == want)
    out["abs_error"] += abs(counts[b] - want)
    out["samples"] += 1.0
  return out


def count_figures(sums: Mapping[str, float]) -> dict[str, float]:
  return {"count_accuracy": _ratio(sums["match"], sums["samples"]),
          "count_mae": _ratio(sums["abs_error"], sums["samples"])}


def palette_sums(rgb: np.ndarray, palette_texts: Sequence[str], valid: np.ndarray,
                 min_pixels: int = 0) -> dict[str, float]:
  """Share-weighted distance of each requested colour to the nearest dominant
  colour of `rgb` (B, H, W, 3) in [0, 1]. (`min_pixels`: unused.)"""
  del min_pixels
  rgb = np.clip(np.round(np.asarray(rgb, np.float64) * 255), 0, 255).astype(np.uint8)
  step = 256 / scene_sequences.COLOR_BINS
  out = {"distance": 0.0, "share": 0.0}
  for b, text in enumerate(palette_texts):
    if not valid[b]:
      continue
    q = scene_sequences.from_text("palette", str(text))
    got = scene_extras.palette(rgb[b])["colors"].astype(np.float64)
    for color, share in zip(q["colors"], q["share_pct"]):
      want = (np.asarray(color, np.float64) + 0.5) * step
      out["distance"] += share * float(np.min(np.linalg.norm(got - want, axis=-1)))
      out["share"] += share
  return out


def palette_figures(sums: Mapping[str, float]) -> dict[str, float]:
  return {"palette_distance": _ratio(sums["distance"], sums["share"])}


def _ratio(a: float, b: float) -> float:
  return float(a) / float(b) if b else 0.0


def _f1(p: float, r: float) -> float:
  return 2 * p * r / (p + r) if p + r else 0.0


def _matched_figures(sums: Mapping[str, float], prefix: str,
                     matched: str = "matched") -> dict[str, float]:
  """Precision (sums[matched] / named), recall (sums[matched] / objects) and F1."""
  p = _ratio(sums[matched], sums["named"])
  r = _ratio(sums[matched], sums["objects"])
  return {f"{prefix}_precision": p, f"{prefix}_recall": r, f"{prefix}_f1": _f1(p, r)}


def text_match_figures(kind: str):
  """sums -> box_* or instance_* precision, recall and F1."""
  prefix = {"boxes": "box", "instances": "instance"}[kind]
  return lambda sums: _matched_figures(sums, prefix)


def caption_pair_figures(sums: Mapping[str, float]) -> dict[str, float]:
  """pair_* (shape and colour right) and shape_* (the shape alone) precision, recall, F1."""
  return {**_matched_figures(sums, "pair"), **_matched_figures(sums, "shape", "shapes_matched")}


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
