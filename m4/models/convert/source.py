"""Reads a reference 4M checkpoint: its safetensors and its model config.

A file that is not safetensors (or is truncated), an unreadable config.json,
or a tensor holding NaN or inf is a ConversionError naming the file / tensor.
"""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors import safe_open


class ConversionError(ValueError):
  """The source checkpoint does not fit; the message names the tensor or field."""


def _first_line(e: BaseException) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def check_finite(tensors: dict[str, np.ndarray], where: str) -> None:
  """ConversionError naming the first floating tensor with NaN or inf values."""
  for name in sorted(tensors):
    a = tensors[name]
    if np.issubdtype(a.dtype, np.floating):
      bad = int(a.size - np.count_nonzero(np.isfinite(a)))
      if bad:
        raise ConversionError(f"{where}: tensor {name!r} holds {bad} NaN or inf values (of"
                              f" {a.size}); refusing to convert a damaged or diverged"
                              " checkpoint.")


def read_source(src: str) -> tuple[dict[str, np.ndarray], dict]:
  """(tensors, reference config) of a .safetensors file or a folder with one."""
  path = src
  if os.path.isdir(src):
    found = [f for f in sorted(os.listdir(src)) if f.endswith(".safetensors")]
    if not found:
      raise FileNotFoundError(f"no .safetensors file in {src!r}.")
    path = os.path.join(src, "model.safetensors" if "model.safetensors" in found else found[0])
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path!r} does not exist.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path!r} is not a file.")
  tensors, meta = {}, {}
  try:
    with safe_open(path, framework="numpy") as f:
      meta = dict(f.metadata() or {})
      for k in f.keys():
        tensors[k] = f.get_tensor(k)
  except Exception as e:  # pylint: disable=broad-except  (safetensors' own error types)
    raise ConversionError(f"{path}: not a readable .safetensors file (truncated, or another"
                          f" format): {_first_line(e)}") from None
  check_finite(tensors, path)
  ref_cfg = {}
  cfg_path = os.path.join(os.path.dirname(path), "config.json")
  if os.path.exists(cfg_path):
    try:
      with open(cfg_path) as f:
        ref_cfg = json.load(f)
    except (OSError, ValueError) as e:
      raise ConversionError(f"{cfg_path}: not readable JSON: {_first_line(e)}") from None
  else:  # Released checkpoints keep their args as (YAML/JSON) strings in metadata.
    for k, v in meta.items():
      try:
        ref_cfg[k] = json.loads(v)
      except (TypeError, ValueError):
        ref_cfg[k] = v
  return tensors, ref_cfg


def lookup(ref_cfg: dict, key: str, default=None):
  """A field of the reference config, top level or under `fourm_kwargs`."""
  if key in ref_cfg:
    return ref_cfg[key]
  return ref_cfg.get("fourm_kwargs", {}).get(key, default)
