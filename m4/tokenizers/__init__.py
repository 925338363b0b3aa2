"""Tokenizers: VQ image tokenizers (here) and the WordPiece text tokenizer (`text`).

    from m4 import tokenizers
    tok = tokenizers.load("vq_rgb")              # a name, or a directory
    tokens = tok.encode(rgb_uint8)               # int32 (B, 8, 8)
    rgb = tok.decode(tokens)                     # float32 (B, 64, 64, 3)

A trained VQ tokenizer is a directory holding `tokenizer.json` and
`checkpoints/`: the workdir of a `tokenizer` training run is one
(`python -m m4.main --config=configs/tokenizers/rgb_scenes.py --workdir=DIR`),
and so is a released 4M VQ-VAE or DiVAE converted by
`python -m m4.tools.convert_4m_tokenizer` (`tokenizer.json`'s format says
which; see `released_tokenizer`).
`load(path)` takes such a directory; `load(name)` looks for `<dir>/<name>` in
each directory of the search path (jobs use `load_for_modality`, which
reports failures as errors of their config field):

  1. the `search_path` argument, if given;
  2. else `$M4_TOKENIZERS` (directories separated by os.pathsep), if set;
  3. else `<repo>/tokenizers` then `<repo>/workdirs/tokenizers` (where the
     documented full trainings write: `--workdir=workdirs/tokenizers/vq_rgb`).

Text tokenizers load with `m4.tokenizers.text.load("wordpiece_scenes")`.
"""

from __future__ import annotations

import os
from typing import Sequence

from m4 import modalities
from m4.tokenizers import released_tokenizer
from m4.tokenizers.vq_tokenizer import SPEC_FILE, TokenizerSpec, VQTokenizer
from m4.workdir import ConfigError, require

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV_VAR = "M4_TOKENIZERS"


def search_path() -> list[str]:
  """Directories where `load(name)` looks, in order."""
  env = os.environ.get(ENV_VAR)
  if env:
    return [p for p in env.split(os.pathsep) if p]
  return [os.path.join(REPO, "tokenizers"), os.path.join(REPO, "workdirs", "tokenizers")]


def available(paths: Sequence[str] | None = None) -> dict[str, str]:
  """{name: directory} of the trained tokenizers on the search path."""
  found = {}
  for root in paths if paths is not None else search_path():
    if not os.path.isdir(root):
      continue
    for name in sorted(os.listdir(root)):
      if name not in found and os.path.exists(os.path.join(root, name, SPEC_FILE)):
        found[name] = os.path.join(root, name)
  return found


def resolve(name_or_path: str, paths: Sequence[str] | None = None) -> str:
  """The directory of a tokenizer given by name or path (clear error if none)."""
  if os.path.isdir(name_or_path):
    if not os.path.exists(os.path.join(name_or_path, SPEC_FILE)):
      raise FileNotFoundError(
          f"{name_or_path}: no {SPEC_FILE}; train a tokenizer there first (python -m m4.main"
          f" --config=configs/tokenizers/rgb_scenes.py --workdir={name_or_path}).")
    return name_or_path
  paths = list(paths if paths is not None else search_path())
  found = available(paths)
  if name_or_path not in found:
    raise FileNotFoundError(
        f"unknown tokenizer {name_or_path!r}: not a directory, and not found in {paths}"
        f" (set ${ENV_VAR} to change where names are looked up); available:"
        f" {sorted(found) or 'none'}.")
  return found[name_or_path]


def load(name_or_path: str, search_path: Sequence[str] | None = None) -> VQTokenizer:  # pylint: disable=redefined-outer-name
  """A trained tokenizer by name (see the module docstring) or directory; a
  converted 4M tokenizer (m4.tools.convert_4m_tokenizer) is a ReleasedTokenizer."""
  path = resolve(name_or_path, search_path)
  if released_tokenizer.is_released(path):
    return released_tokenizer.ReleasedTokenizer.from_directory(path)
  return VQTokenizer.from_directory(path)


def load_for_modality(name: str, name_or_path: str | None = None, *, field: str | None = None,
                      search_path: Sequence[str] | None = None) -> VQTokenizer:  # pylint: disable=redefined-outer-name
  """The VQ tokenizer of the registry's image modality `name`: `name_or_path`,
  else the registry entry's `tokenizer`.

  Failures are ConfigErrors of `config.<field>` (default `tokenizers.<name>`)
  naming the path: none named, not found or unreadable, or a grid or
  vocabulary other than the registry's.
  """
  field = field or f"tokenizers.{name}"
  mod = modalities.get(name)
  where = name_or_path or mod.tokenizer
  require(bool(where), field, "names no tokenizer for this input.")
  try:
    tok = load(where, search_path)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"config.{field}: {e}") from None
  hint = ""
  if isinstance(tok, released_tokenizer.ReleasedTokenizer) and tok.grid != mod.grid:
    size = mod.grid[0] * tok.cfg.patch_size
    hint = f" (a converted 4M tokenizer: convert it with --image_size={size})"
  require(tuple(tok.grid) == tuple(mod.grid) and tok.vocab_size == mod.vocab_size, field,
          f"{where} has grid {tok.grid} and {tok.vocab_size} codes; the registry's {name!r}"
          f" has {mod.grid} and {mod.vocab_size}{hint}.")
  return tok


__all__ = ["load", "load_for_modality", "available", "resolve", "search_path", "VQTokenizer",
           "TokenizerSpec"]
