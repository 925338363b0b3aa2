"""PNG grids of samples: rows of named columns, column titles, a caption per row.

    grid.save_grid("grid.png",
                   rows=[{"rgb": rgb, "depth": depth, "semseg": semseg}, ...],
                   captions=["a large red sphere", ...])

Each cell is drawn by its kind (given in `kinds`, else guessed from the
column's name and the array):

  rgb     (H, W, 3) float in [0, 1] or uint8.
  depth   (H, W) float, colour-mapped (by inverse depth) over one range for the
          whole grid (`depth_range`, or the valid pixels' min and max);
          0 = invalid, black.
  semseg  (H, W) int class ids through SEMSEG_PALETTE (255 = unlabelled,
          black); the same colours in every grid.
  tokens  (h, w) int token grid, each id its own colour, upscaled to the cells.
  gray    (H, W) float in [0, 1] or uint8.

Cells are upscaled (nearest) to a common size; a missing cell is left blank.
numpy and PIL only, so every layer may draw (`python -m m4.tools.grid` draws a
scenes dataset).
"""

from __future__ import annotations

import colorsys
import os
import textwrap
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

KINDS = ("rgb", "depth", "semseg", "normals", "edges", "tokens", "gray")
UNLABELLED = 255


def _semseg_palette() -> np.ndarray:
  """256 colours: hand-picked for the first classes, then spread hues."""
  fixed = [
      (135, 196, 235),  # 0 sky
      (176, 158, 120),  # 1 ground
      (228, 26, 28),  # 2 sphere
      (77, 175, 74),  # 3 cube
      (55, 126, 184),  # 4 cylinder
      (255, 200, 0),  # 5 cone
      (152, 78, 163),
      (255, 127, 0),
      (166, 86, 40),
      (247, 129, 191),
  ]
  out = np.zeros((256, 3), np.uint8)
  out[:len(fixed)] = fixed
  for i in range(len(fixed), 255):
    hue = (i * 0.618033988749895) % 1.0  # Golden-ratio steps keep hues apart.
    sat, val = (0.65, 0.95) if i % 2 else (0.9, 0.7)
    out[i] = np.round(np.array(colorsys.hsv_to_rgb(hue, sat, val)) * 255)
  out[UNLABELLED] = 0
  return out


SEMSEG_PALETTE = _semseg_palette()
_TOKEN_PALETTE = np.random.default_rng(0).integers(40, 256, (4096, 3)).astype(np.uint8)


def guess_kind(name: str, x: np.ndarray) -> str:
  """The kind of a column from its name (e.g. "depth_recon"), else its shape."""
  lname = name.lower()
  for kind in ("semseg", "depth", "normals", "edges", "tok", "rgb"):
    if kind in lname:
      return "tokens" if kind == "tok" else kind
  x = np.asarray(x)
  if x.ndim == 3 and x.shape[-1] == 3:
    return "rgb"
  if np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8:
    return "semseg"
  return "gray"


def _unit_to_uint8(x: np.ndarray) -> np.ndarray:
  if x.dtype == np.uint8:
    return x
  return np.round(np.clip(np.nan_to_num(x.astype(np.float32)), 0, 1) * 255).astype(np.uint8)


def colorize_depth(depth: np.ndarray, vmin: float, vmax: float,
                   cmap: str = "viridis") -> np.ndarray:
  """(H, W) depth -> uint8 RGB; invalid (<= 0, nan) black.

  Colours follow inverse depth between 1 / vmax (dark) and 1 / vmin (bright),
  which shows near objects in more detail than a linear map.
  """
  # Heavy (matplotlib); only depth colour maps need it.
  import matplotlib  # pylint: disable=g-import-not-at-top
  depth = np.asarray(depth, np.float32)
  valid = np.isfinite(depth) & (depth > 0)
  vmin = max(float(vmin), 1e-6)
  vmax = max(float(vmax), vmin * (1 + 1e-6))
  inv = 1.0 / np.where(valid, depth, vmax)
  x = np.clip((inv - 1 / vmax) / (1 / vmin - 1 / vmax), 0, 1)
  rgb = np.round(matplotlib.colormaps[cmap](x)[..., :3] * 255).astype(np.uint8)
  rgb[~valid] = 0
  return rgb


def colorize_semseg(semseg: np.ndarray) -> np.ndarray:
  semseg = np.asarray(semseg)
  return SEMSEG_PALETTE[np.clip(semseg, 0, 255).astype(np.int64)]


def colorize_normals(normals: np.ndarray) -> np.ndarray:
  """Camera-space normals (H, W, 3) as RGB (n + 1) / 2; zero vectors (sky) black."""
  normals = np.asarray(normals, np.float32)
  shown = np.where(np.any(normals != 0, -1, keepdims=True), (normals + 1) / 2, 0.0)
  return _unit_to_uint8(shown)


def colorize_tokens(tokens: np.ndarray) -> np.ndarray:
  return _TOKEN_PALETTE[np.asarray(tokens).astype(np.int64) % len(_TOKEN_PALETTE)]


def to_image(x: np.ndarray, kind: str, *, depth_range: tuple[float, float] | None = None,
             cmap: str = "viridis") -> np.ndarray:
  """One cell as uint8 (H, W, 3)."""
  x = np.asarray(x)
  if kind in ("rgb", "normals"):
    if x.ndim != 3 or x.shape[-1] != 3:
      raise ValueError(f"grid: an {kind} cell must be (H, W, 3), got {x.shape}.")
    return _unit_to_uint8(x) if kind == "rgb" else colorize_normals(x)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 2:
    raise ValueError(f"grid: a {kind} cell must be (H, W), got {x.shape}.")
  if kind == "depth":
    lo, hi = depth_range if depth_range is not None else valid_depth_range([x])
    return colorize_depth(x, lo, hi, cmap)
  if kind == "semseg":
    return colorize_semseg(x)
  if kind == "tokens":
    return colorize_tokens(x)
  if kind in ("gray", "edges"):  # Edges: {0, 1} maps, white on black.
    return np.repeat(_unit_to_uint8(x.astype(np.float32) if kind == "edges" else x)[..., None],
                     3, axis=-1)
  raise ValueError(f"grid: unknown kind {kind!r}; kinds: {KINDS}.")


def valid_depth_range(depths) -> tuple[float, float]:
  """(min, max) of the valid (finite, > 0) depths of the given maps; (0, 1) if none."""
  vals = [d[np.isfinite(d) & (d > 0)] for d in map(np.asarray, depths)]
  vals = np.concatenate([v.ravel() for v in vals]) if vals else np.zeros(0)
  if vals.size == 0:
    return 0.0, 1.0
  return float(vals.min()), float(vals.max())


def _resize_nearest(img: np.ndarray, h: int, w: int) -> np.ndarray:
  if img.shape[:2] == (h, w):
    return img
  rows = (np.arange(h) * img.shape[0] // h)
  cols = (np.arange(w) * img.shape[1] // w)
  return img[rows][:, cols]


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: a fixed bitmap font.
    return ImageFont.load_default()


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
  avg = max(font.getlength("abcdefghijklmnopqrstuvwxyz") / 26, 1)
  lines = textwrap.wrap(text, max(int(width / avg), 8))
  if len(lines) > max_lines:
    lines = lines[:max_lines]
    lines[-1] = lines[-1][:-3] + "..."
  return lines


def make_grid(rows: Sequence[Mapping[str, np.ndarray | None]],
              captions: Sequence[str] | None = None,
              kinds: Mapping[str, str] | None = None, *,
              columns: Sequence[str] | None = None,
              titles: Mapping[str, str] | None = None,
              depth_range: tuple[float, float] | None = None,
              cell_size: int | None = None, cmap: str = "viridis",
              font_size: int = 12, max_caption_lines: int = 3) -> np.ndarray:
  """The grid as a uint8 (H, W, 3) image (see the module docstring).

  Args:
    rows: one dict per row, column name -> array (or None for a blank cell).
    captions: text under each row (None or "" for none).
    kinds: column name -> one of KINDS; guessed where missing.
    columns: column order (default: names in order of first appearance).
    titles: column name -> title (default: the name).
    depth_range: (min, max) metres for every depth cell; default: the range of
      the grid's valid depth pixels, shared by all its depth columns.
    cell_size: cell height in pixels (default: the largest cell, upscaled by
      an integer factor to at least 128).
    cmap: matplotlib colour map for depth.
  """
  if not rows:
    raise ValueError("grid: no rows to draw.")
  if captions is not None and len(captions) != len(rows):
    raise ValueError(f"grid: {len(captions)} captions for {len(rows)} rows.")
  kinds = dict(kinds or {})
  if columns is None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
  for name in columns:
    if name not in kinds:
      cell = next((r[name] for r in rows if r.get(name) is not None), None)
      kinds[name] = guess_kind(name, cell) if cell is not None else "gray"
    if kinds[name] not in KINDS:
      raise ValueError(f"grid: column {name!r} has unknown kind {kinds[name]!r}; kinds: {KINDS}.")
  if depth_range is None:
    depth_range = valid_depth_range(
        [r[c] for r in rows for c in columns if kinds[c] == "depth" and r.get(c) is not None])

  cells = [[None if r.get(c) is None else
            to_image(r[c], kinds[c], depth_range=depth_range, cmap=cmap)
            for c in columns] for r in rows]
  # Token grids are small; they are stretched to the images' cells.
  shapes = [img.shape[:2] for row in cells for c, img in zip(columns, row)
            if img is not None and kinds[c] != "tokens"]
  shapes = shapes or [img.shape[:2] for row in cells for img in row if img is not None]
  src_h = max(s[0] for s in shapes) if shapes else 64
  src_w = max(s[1] for s in shapes) if shapes else 64
  if cell_size is None:
    cell_size = src_h * max(1, -(-128 // src_h))
  cell_h, cell_w = cell_size, max(1, round(cell_size * src_w / src_h))

  font = _font(font_size)
  line_h = font_size + 4
  pad = 4
  width = len(columns) * (cell_w + pad) + pad
  wrapped = [_wrap(c or "", font, width - 2 * pad, max_caption_lines)
             for c in (captions or [""] * len(rows))]
  title_h = line_h + pad
  row_heights = [cell_h + pad + len(lines) * line_h for lines in wrapped]
  height = title_h + sum(row_heights) + pad * len(rows) + pad
  canvas = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for j, name in enumerate(columns):
    title = (titles or {}).get(name, name)
    x = pad + j * (cell_w + pad)
    draw.text((x + max(0, (cell_w - font.getlength(title)) / 2), pad // 2), title,
              fill=(0, 0, 0), font=font)
  y = title_h
  for row, lines, rh in zip(cells, wrapped, row_heights):
    for j, img in enumerate(row):
      x = pad + j * (cell_w + pad)
      if img is None:
        draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=(235, 235, 235))
        continue
      canvas.paste(Image.fromarray(_resize_nearest(img, cell_h, cell_w)), (x, y))
    for i, line in enumerate(lines):
      draw.text((pad, y + cell_h + pad // 2 + i * line_h), line, fill=(0, 0, 0), font=font)
    y += rh + pad
  return np.asarray(canvas)


def save_grid(path: str, rows: Sequence[Mapping[str, np.ndarray | None]],
              captions: Sequence[str] | None = None,
              kinds: Mapping[str, str] | None = None, **kwargs) -> str:
  """Draws `make_grid(rows, captions, kinds, **kwargs)` into the PNG `path`."""
  img = make_grid(rows, captions, kinds, **kwargs)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}.png"
  Image.fromarray(img).save(tmp)
  os.replace(tmp, path)
  return path
