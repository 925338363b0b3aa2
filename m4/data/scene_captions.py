"""Captions of scenes from their scene graph, and parse_caption to read them back."""

from __future__ import annotations

import re

from m4.data.scene_spec import COLORS, SHAPES, SIZES

RELATIONS = ("left of", "in front of", "behind")
# Consecutive objects (left to right) are "left of" each other when their
# centres are at least this fraction of the width apart, otherwise "in front
# of" / "behind" by depth.
LEFT_OF_FRACTION = 0.1


def caption_words(shape: int, color: int, size: int) -> str:
  """One object's phrase, e.g. "a large red sphere"."""
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


def make_caption(shape, color, size, center_px, depth, resolution) -> str:
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
