"""Boxes, palette, metadata and instances of a scenes sample as text, 4M-21's
sequence modalities.

4M writes bounding boxes, colour palettes and image metadata as word
sequences in its shared WordPiece vocabulary; m4 does the same with the
scenes extras (m4.data.scene_extras), after any crop:

  boxes     "cube 23 29 36 44 cone 48 26 58 37": per object its shape and
            x0 y0 x1 y1, each in COORD_BINS bins of the image side (at 64 px:
            pixels), objects in the stored order; "none" without objects.
  palette   "color 9 8 7 65 color 12 13 15 15 ...": per colour its red,
            green and blue in COLOR_BINS levels and its share of the pixels
            in percent, rounded to SHARE_STEP.
  metadata  "count 3 pitch 15 height 23 brightness 60 objects 7": object
            count, camera pitch (degrees below the horizon), camera height
            (decimetres), mean luma (percent), object pixels (percent).
  instances "cone 23 29 36 44 0110 1111 1111 0110 ...": per object of the
            instance map (its ids in order) its shape (the semseg class
            most of its pixels hold), the box of its visible pixels as boxes
            do, and its mask as MASK_CELLS x MASK_CELLS cells of that box,
            one word a row, a cell 1 when the object covers at least half
            of it: 4M-21's instances as boxes plus per-box masks.

Every word is lower case and every number a plain non-negative integer, so
the text tokenizer's normalisation leaves the text as it is and
`from_text(kind, to_text(kind, x)) == quantize(kind, x)`: a round trip is
exact up to the quantisation stated above. `add_texts` writes a sample's
texts under the registry's data keys (`<kind>_text`; m4.data.transforms'
AlignedCrop calls it after every crop), and with the boxes their `box_map`
(the boxes text drawn as a class map: the same boxes as an image-like
modality); `picture` draws a boxes, instances or palette text for grids.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from m4.data.scene_spec import CLASSES, GROUND

KINDS = ("boxes", "palette", "metadata", "instances")
# The sample key each text is written from (instances also read semseg).
SOURCES = {"boxes": "boxes", "palette": "palette", "metadata": "metadata",
           "instances": "instance"}
EXTRAS = tuple(SOURCES.values())  # The scenes extras (SceneSpec.extras) of all four texts.
IMAGE_KEYS = ("rgb", "depth", "semseg", "instance")  # Whose size `add_texts` reads.
COORD_BINS = 64  # Box coordinates: bins of the image side (0..COORD_BINS).
COLOR_BINS = 16  # Palette colours: levels per channel (0..COLOR_BINS - 1).
SHARE_STEP = 5  # Palette shares: percent, in steps of this.
MASK_CELLS = 4  # Instance masks: cells per side of the object's box.
METADATA = (("count", "count", 1.0), ("pitch", "camera_pitch_deg", 1.0),
            ("height", "camera_height_m", 10.0), ("brightness", "brightness", 100.0),
            ("objects", "object_fraction", 100.0))  # (word, key, scale to the integer).


def _coords(box_px, image_size) -> list:
  """Pixel boxes (K, 4) -> integer coordinate bins."""
  h, w = image_size
  scale = np.array([w, h, w, h], np.float64) / COORD_BINS
  box = np.asarray(box_px, np.float64).reshape(-1, 4)
  return np.clip(np.round(box / scale), 0, COORD_BINS).astype(int).tolist()


def _instances(instance: np.ndarray, semseg: np.ndarray) -> dict:
  """Each object of an instance map (ids >= 2): class, pixel box, mask cells."""
  instance, semseg = np.asarray(instance), np.asarray(semseg)
  out = {"class": [], "bbox_px": [], "mask": []}
  for k in np.unique(instance[instance >= 2]):
    mask = instance == k
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    labels = semseg[mask]
    labels = labels[labels != 255]
    if not labels.size:  # No labelled pixel: no class to name.
      continue
    out["class"].append(int(np.bincount(labels).argmax()))
    out["bbox_px"].append([x0, y0, x1, y1])
    # Area means over MASK_CELLS^2 equal cells (each pixel repeated MASK_CELLS
    # times a side, so boxes narrower than MASK_CELLS work too).
    m, (h, w) = MASK_CELLS, (y1 - y0, x1 - x0)
    fine = mask[y0:y1, x0:x1].repeat(m, 0).repeat(m, 1).reshape(m, h, m, w)
    out["mask"].append((fine.mean((1, 3)) >= 0.5).astype(int).tolist())
  return out


def quantize(kind: str, value: Mapping[str, Any], image_size=(64, 64)) -> dict:
  """The values `to_text` writes: integers, padding and empty entries removed.
  instances' `value` holds the `instance` and `semseg` maps."""
  if kind == "boxes":
    classes = np.asarray(value["class"]).reshape(-1)
    keep = classes >= 0
    coords = _coords(np.asarray(value["bbox_px"]).reshape(-1, 4)[keep], image_size)
    return {"class": classes[keep].astype(int).tolist(), "bbox": coords}
  if kind == "instances":
    objects = _instances(value["instance"], value["semseg"])
    return {"class": objects["class"], "bbox": _coords(objects["bbox_px"], image_size),
            "mask": objects["mask"]}
  if kind == "palette":
    colors = np.asarray(value["colors"], np.int64) * COLOR_BINS // 256
    share = np.round(np.asarray(value["fraction"], np.float64) * 100 / SHARE_STEP) * SHARE_STEP
    return {"colors": colors.tolist(), "share_pct": share.astype(int).tolist()}
  if kind == "metadata":
    return {word: int(max(0, round(float(value[key]) * scale))) for word, key, scale in METADATA}
  raise ValueError(f"scene sequences: unknown kind {kind!r}; kinds: {KINDS}.")


def to_text(kind: str, value: Mapping[str, Any], image_size=(64, 64)) -> str:
  """The text of a sample's boxes, palette, metadata or instances (module docstring)."""
  q = quantize(kind, value, image_size)
  if kind in ("boxes", "instances"):  # Per object: shape, box, then (instances) mask rows.
    masks = q.get("mask", [[]] * len(q["class"]))
    words = [" ".join([CLASSES[c], *map(str, b), *("".join(map(str, r)) for r in m)])
             for c, b, m in zip(q["class"], q["bbox"], masks)]
    return " ".join(words) or "none"
  if kind == "palette":
    return " ".join(f"color {r} {g} {b} {s}" for (r, g, b), s in zip(q["colors"], q["share_pct"]))
  return " ".join(f"{word} {q[word]}" for word, _, _ in METADATA)


def _groups(words: list[str], size: int) -> list[list[str]]:
  return [words[i:i + size] for i in range(0, len(words), size)]


def from_text(kind: str, text: str) -> dict:
  """The quantised values of a text `to_text` wrote; ValueError naming what does not parse."""
  words = text.split()
  try:
    if kind in ("boxes", "instances"):
      cells = MASK_CELLS if kind == "instances" else 0
      if words == ["none"]:
        return {"class": [], "bbox": [], **({"mask": []} if cells else {})}
      size = 5 + cells
      rows = [w for i, w in enumerate(words) if i % size >= 5]
      if len(words) % size or any(len(r) != cells or set(r) - set("01") for r in rows):
        raise ValueError("expected groups of 'shape x0 y0 x1 y1'" + (
            f" and {cells} rows of {cells} digits 0 / 1" if cells else ""))
      groups = _groups(words, size)
      out = {"class": [CLASSES.index(g[0]) for g in groups],
             "bbox": [[int(v) for v in g[1:5]] for g in groups]}
      if cells:
        out["mask"] = [[[int(c) for c in r] for r in g[5:]] for g in groups]
      return out
    if kind == "palette":
      if len(words) % 5 or any(w != "color" for w in words[::5]):
        raise ValueError("expected groups of 'color r g b share'")
      groups = _groups(words, 5)
      return {"colors": [[int(v) for v in g[1:4]] for g in groups],
              "share_pct": [int(g[4]) for g in groups]}
    if kind == "metadata":
      expected = [word for word, _, _ in METADATA]
      if words[::2] != expected or len(words) != 2 * len(expected):
        raise ValueError(f"expected '{' N '.join(expected)} N'")
      return {word: int(v) for word, v in zip(words[::2], words[1::2])}
  except ValueError as e:
    raise ValueError(f"scene sequences: cannot read {kind} from {text!r}: {e}.") from None
  raise ValueError(f"scene sequences: unknown kind {kind!r}; kinds: {KINDS}.")


def regions(kind: str, text: str, image_size=(64, 64)) -> list[tuple[int, np.ndarray]]:
  """(class id, bool (H, W) region) of each object of a boxes text (the box
  filled) or an instances text (its mask cells); [] if the text does not parse."""
  try:
    q = from_text(kind, text)
  except ValueError:
    return []
  h, w = image_size
  out = []
  for i, (c, (x0, y0, x1, y1)) in enumerate(zip(q["class"], q["bbox"])):
    x0, x1 = (np.array([x0, x1]) * w / COORD_BINS).round().astype(int).clip(0, w)
    y0, y1 = (np.array([y0, y1]) * h / COORD_BINS).round().astype(int).clip(0, h)
    region = np.zeros((h, w), bool)
    if x1 > x0 and y1 > y0:
      if kind == "instances":  # Each pixel in the cell its centre falls in.
        rows = ((np.arange(y1 - y0) + 0.5) * MASK_CELLS / (y1 - y0)).astype(int)
        cols = ((np.arange(x1 - x0) + 0.5) * MASK_CELLS / (x1 - x0)).astype(int)
        region[y0:y1, x0:x1] = np.asarray(q["mask"][i], bool)[rows][:, cols]
      else:
        region[y0:y1, x0:x1] = True
    out.append((c, region))
  return out


def picture(kind: str, text: str, image_size=(64, 64)) -> np.ndarray | None:
  """A boxes text as a class map (each box's outline in its class, 255
  elsewhere: m4.pictures draws it as semseg); an instances text as its masks
  in their classes; a palette text as RGB in [0, 1] (a vertical band per
  colour, as wide as its share); None for metadata or a text that does not
  parse."""
  h, w = image_size
  if kind in ("boxes", "instances"):
    objects = regions(kind, text, image_size)
    if not objects and text.split() != ["none"]:
      return None
    out = np.full((h, w), 255, np.int32)
    for c, region in objects:
      if kind == "boxes":  # The outline: region pixels with a neighbour outside.
        inner = np.zeros_like(region)
        inner[1:-1, 1:-1] = (region[1:-1, 1:-1] & region[:-2, 1:-1] & region[2:, 1:-1]
                             & region[1:-1, :-2] & region[1:-1, 2:])
        region = region & ~inner
      out[region] = c
    return out
  if kind != "palette":
    return None
  try:
    q = from_text(kind, text)
  except ValueError:
    return None
  colors = (np.asarray(q["colors"], np.float64).reshape(-1, 3) + 0.5) / COLOR_BINS
  edges = np.round(np.cumsum(q["share_pct"]) / max(1, sum(q["share_pct"])) * w).astype(int)
  band = np.searchsorted(edges, np.arange(w), side="right")
  return colors[np.minimum(band, len(colors) - 1)][None].repeat(h, 0) if len(colors) else None


def box_map(text: str, image_size=(64, 64)) -> np.ndarray:
  """A boxes text as an int32 class map: each box filled with its class, the
  larger boxes first (a smaller one stays visible on top), `ground` elsewhere
  (so the semseg VQ tokenizer reads it as a map of its own kind)."""
  out = np.full(image_size, GROUND, np.int32)
  for c, region in sorted(regions("boxes", text, image_size), key=lambda cr: -cr[1].sum()):
    out[region] = c
  return out


def add_texts(sample: Mapping[str, Any], image_size=None) -> dict:
  """`sample` with `<kind>_text` (the sequence modalities' data keys) for each
  kind whose source (SOURCES) it holds, instances only beside a semseg map,
  and `box_map` with the boxes;
  boxes in pixels of `image_size` (default: the size of the sample's images,
  so apply it after any crop)."""
  out = dict(sample)
  for kind, source in SOURCES.items():
    if source not in sample or (kind == "instances" and "semseg" not in sample):
      continue
    if image_size is None and kind in ("boxes", "instances"):
      sizes = [np.shape(sample[k])[:2] for k in IMAGE_KEYS if k in sample]
      if not sizes:
        raise ValueError(f"sample {sample.get('id')}: {kind} text needs the image size; the"
                         f" sample has no image among {IMAGE_KEYS} (keys: {sorted(sample)}).")
      image_size = sizes[0]
    value = sample if kind == "instances" else sample[source]
    out[f"{kind}_text"] = to_text(kind, value, image_size)
    if kind == "boxes":
      out["box_map"] = box_map(out["boxes_text"], image_size)
  return out
