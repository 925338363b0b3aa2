"""The modality registry: the one place that says what a modality is.

A modality is a named stream of discrete tokens (or, for `pixels`, of raw image
patches that only the encoder reads). Everything downstream (tokenizers,
masking, the model's embeddings and heads, generation) looks its modality up
here. Adding a modality is one `register(...)` call plus a tokenizer config and
data; no model code changes.

    rgb = modalities.get("rgb")
    rgb.num_tokens  # 64: an 8x8 grid of VQ tokens for a 64 px image.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

IMAGE = "image"  # A grid of VQ tokens: tensor shape (h * w,), row-major.
SEQUENCE = "sequence"  # Text tokens (WordPiece), with T5-style span masking.
PIXELS = "pixels"  # Raw image patches, encoder input only (4M's `rgb@224`).
KINDS = (IMAGE, SEQUENCE, PIXELS)

INPUT = "input"
TARGET = "target"
ROLES = (INPUT, TARGET)


@dataclasses.dataclass(frozen=True)
class Modality:
  """What a modality is.

  Attributes:
    name: registry key, also the key in batches and configs (e.g. "depth").
    kind: one of KINDS.
    vocab_size: size of the token vocabulary (0 for `pixels`).
    num_tokens: tokens per sample: h * w for images and pixels, the maximum
      number of text tokens for sequences.
    grid: (h, w) of the token grid for images and pixels; None for sequences.
    roles: which of ("input", "target") the modality may play.
    tokenizer: name of its tokenizer (a config in configs/tokenizers/ and
      assets in tokenizers/), or None for pixels.
    data_key: the key of the raw sample this modality is made from.
  """

  name: str
  kind: str
  vocab_size: int
  num_tokens: int
  grid: tuple[int, int] | None = None
  roles: tuple[str, ...] = ROLES
  tokenizer: str | None = None
  data_key: str | None = None

  def __post_init__(self):
    where = f"modality {self.name!r}"
    if not self.name or not isinstance(self.name, str):
      raise ValueError(f"{where}: name must be a non-empty string.")
    if self.kind not in KINDS:
      raise ValueError(f"{where}: kind {self.kind!r} is not one of {KINDS}.")
    if self.num_tokens <= 0:
      raise ValueError(f"{where}: num_tokens must be positive, got {self.num_tokens}.")
    if self.kind != PIXELS and self.vocab_size <= 0:
      raise ValueError(f"{where}: vocab_size must be positive, got {self.vocab_size}.")
    if not self.roles or any(r not in ROLES for r in self.roles):
      raise ValueError(f"{where}: roles {self.roles!r} must be a non-empty subset of {ROLES}.")
    if self.kind == PIXELS and TARGET in self.roles:
      raise ValueError(f"{where}: pixel modalities are encoder inputs only.")
    if self.kind in (IMAGE, PIXELS):
      if self.grid is None or len(self.grid) != 2 or min(self.grid) <= 0:
        raise ValueError(f"{where}: {self.kind} modalities need a positive (h, w) grid.")
      if self.grid[0] * self.grid[1] != self.num_tokens:
        raise ValueError(
            f"{where}: grid {tuple(self.grid)} has {self.grid[0] * self.grid[1]} tokens,"
            f" but num_tokens is {self.num_tokens}.")
    elif self.grid is not None:
      raise ValueError(f"{where}: sequences have no grid.")
    # Normalise lists (e.g. from JSON) to tuples so specs stay hashable.
    object.__setattr__(self, "roles", tuple(self.roles))
    if self.grid is not None:
      object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
    if self.data_key is None:
      object.__setattr__(self, "data_key", self.name)

  @property
  def is_image(self) -> bool:
    return self.kind == IMAGE

  @property
  def is_sequence(self) -> bool:
    return self.kind == SEQUENCE

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


_REGISTRY: dict[str, Modality] = {}


def register(modality: Modality, *, replace: bool = False) -> Modality:
  """Adds `modality`; a second entry under the same name is an error."""
  if not isinstance(modality, Modality):
    raise TypeError(f"register() takes a Modality, got {type(modality).__name__}.")
  old = _REGISTRY.get(modality.name)
  if old is not None and old != modality and not replace:
    raise ValueError(
        f"modality {modality.name!r} is already registered as {old};"
        " choose another name or pass replace=True.")
  _REGISTRY[modality.name] = modality
  return modality


def get(name: str) -> Modality:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise KeyError(f"unknown modality {name!r}; registered: {sorted(_REGISTRY)}.") from None


def names() -> list[str]:
  return list(_REGISTRY)


def get_many(names_: Iterable[str]) -> dict[str, Modality]:
  return {n: get(n) for n in names_}


def from_config(specs: Mapping[str, Mapping] | None) -> list[Modality]:
  """Modalities described in a config or a saved model ({name: Modality
  fields}), without registering them; ValueError names a bad entry."""
  out = []
  for name, spec in (specs or {}).items():
    fields = dict(spec)
    fields.setdefault("name", name)
    if fields["name"] != name:
      raise ValueError(f"config.modalities.{name}: name field says {fields['name']!r}.")
    try:
      out.append(Modality(**fields))
    except TypeError as e:
      raise ValueError(f"config.modalities.{name}: {e}") from None
  return out


def register_from_config(specs: Mapping[str, Mapping] | None) -> list[Modality]:
  """Registers modalities described in a config (`config.modalities`).

  Each entry maps a name to Modality fields; an entry equal to the registered
  one is accepted, a different one under a taken name is an error. Converted
  checkpoints use this to bring their own modalities (e.g. 14x14 grids).
  """
  return [register(m) for m in from_config(specs)]


# The embedded default: 64 px scenes, 8x8 VQ tokens per image-like modality.
# Vocabulary sizes here are the source of truth for the tokenizers' codebooks.
register(Modality("rgb", IMAGE, vocab_size=1024, num_tokens=64, grid=(8, 8), tokenizer="vq_rgb"))
register(Modality("depth", IMAGE, vocab_size=1024, num_tokens=64, grid=(8, 8), tokenizer="vq_depth"))
register(Modality("semseg", IMAGE, vocab_size=512, num_tokens=64, grid=(8, 8), tokenizer="vq_semseg"))
register(Modality("caption", SEQUENCE, vocab_size=512, num_tokens=48, tokenizer="wordpiece_scenes"))
# RGB as raw 8x8-pixel patches, an encoder input only (4M-7's `rgb@224`).
register(Modality("rgb_pixels", PIXELS, vocab_size=0, num_tokens=64, grid=(8, 8),
                  roles=(INPUT,), data_key="rgb"))
# 4M-21's geometry on the scenes (their data: `data.extras`, m4.data.scene_extras).
register(Modality("normals", IMAGE, vocab_size=1024, num_tokens=64, grid=(8, 8),
                  tokenizer="vq_normals"))
register(Modality("edges", IMAGE, vocab_size=1024, num_tokens=64, grid=(8, 8), tokenizer="vq_edges"))
# 4M-21's sequence modalities on the scenes: boxes, palette, metadata and
# instances (boxes plus per-box masks) as text (m4.data.scene_sequences; data:
# `data.extras`, `instance` for instances), in one WordPiece vocabulary with
# the caption (4M's shared text vocabulary): the tokenizer trained on all
# five (configs/tokenizers/caption_scenes.py:shared).
for _name, _tokens in (("boxes", 40), ("palette", 32), ("metadata", 16), ("instances", 40)):
  register(Modality(_name, SEQUENCE, vocab_size=512, num_tokens=_tokens,
                    tokenizer="wordpiece_scenes21", data_key=f"{_name}_text"))
# The same boxes as an image: the boxes text drawn as a class map
# (scene_sequences.box_map), tokenized by the semseg VQ tokenizer; an input
# that steers by position as the semseg and RGB inputs do (experiments/
# steerable_generation/, "Boxes as text or as a map").
register(Modality("box_map", IMAGE, vocab_size=512, num_tokens=64, grid=(8, 8),
                  tokenizer="vq_semseg", roles=(INPUT,)))
