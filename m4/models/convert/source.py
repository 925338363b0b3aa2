"""Reads a reference 4M checkpoint: its safetensors and its model config."""

from __future__ import annotations

import json
import os

import numpy as np


def read_source(src: str) -> tuple[dict[str, np.ndarray], dict]:
  """(tensors, reference config) of a .safetensors file or a folder with one."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  path = src
  if os.path.isdir(src):
    found = [f for f in sorted(os.listdir(src)) if f.endswith(".safetensors")]
    if not found:
      raise FileNotFoundError(f"no .safetensors file in {src!r}.")
    path = os.path.join(src, "model.safetensors" if "model.safetensors" in found else found[0])
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path!r} does not exist.")
  tensors, meta = {}, {}
  with safe_open(path, framework="numpy") as f:
    meta = dict(f.metadata() or {})
    for k in f.keys():
      tensors[k] = f.get_tensor(k)
  ref_cfg = {}
  cfg_path = os.path.join(os.path.dirname(path), "config.json")
  if os.path.exists(cfg_path):
    with open(cfg_path) as f:
      ref_cfg = json.load(f)
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
