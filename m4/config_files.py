"""The two things config files share: parsing a variant and building on another config file.

A config file is `configs/<path>.py` with `get_config(arg=None)`; the part
after a colon in `--config=FILE:ARG` is its variant. Every config parses it
with `variant`, so an unknown one is refused the same way everywhere, and
builds on a shared file (a `common.py`, the data config) with `load`:

    from m4 import config_files

    def get_config(arg=None):
      variant = config_files.variant(arg, __file__, ("full", "quick"))
      common = config_files.load(__file__, "common.py")
      data = config_files.load(__file__, "../data/scenes64.py").get_config().data
"""

import os
import runpy
import types


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def variant(arg: str | None, config_file: str, variants) -> str:
  """`arg`, or the first of `variants` when it is empty; ValueError naming the
  file and the known variants for any other value."""
  name = arg or variants[0]
  if name not in variants:
    shown = ", ".join(repr(v) for v in variants[1:])
    raise ValueError(f"{_relative(config_file)}: unknown variant {arg!r}; use no argument"
                     f" ({variants[0]}){' or ' + shown if shown else ''}.")
  return name


def load(config_file: str, path: str) -> types.SimpleNamespace:
  """The names defined by the config file at `path`, relative to `config_file`'s folder."""
  full = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config_file)), path))
  if not os.path.exists(full):
    raise FileNotFoundError(f"{_relative(config_file)}: builds on {full}, which does not exist.")
  return types.SimpleNamespace(**runpy.run_path(full))


def _relative(config_file: str) -> str:
  """The path from the repository root for files in it (`configs/...`,
  `experiments/<name>/configs/...`), else from a `configs` folder, else as given."""
  full = os.path.abspath(config_file)
  rel = os.path.relpath(full, _REPO)
  if not rel.startswith(".."):
    return rel.replace(os.sep, "/")
  parts = full.split(os.sep)
  return "/".join(parts[parts.index("configs"):]) if "configs" in parts else config_file
