"""Saved models: a directory with config.json and an orbax checkpoint.

    pretrained.save(directory, model, extra={"source": ...})
    model = pretrained.load(directory)                  # on the default device (or a run's workdir)
    model = pretrained.load(directory, mesh=mesh)       # sharded by logical names

`config.json` holds `model` (FourMConfig fields) and `modalities` (their
Modality specs), so a model opens from its directory alone: loading reads
no registry and registers nothing. The parameters are `state["model"]` of the
checkpoint in `directory/checkpoints`, readable with
`m4.checkpoints.restore_subtree(directory, target, key="model")`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
from flax import nnx

from m4 import checkpoints
from m4 import sharding
from m4 import workdir
from m4.workdir import ConfigError, require
from m4.models import configs
from m4.models.fourm import FourM

CONFIG = "config.json"
# A pretraining run's model description beside its experiment config.json: the
# FourMConfig and its modalities' specs, as resolved when the run started.
MODEL_FILE = "model.json"
PARAM_KEYS = ("model", "params")  # Where runs keep the model parameters in their state.


def model_config_dict(cfg: configs.FourMConfig) -> dict:
  """The config.json content describing a model and its modalities."""
  return {"model": cfg.to_dict(), "modalities": cfg.modalities_dict()}


def save(directory: str, model: FourM, *, step: int = 0,
         extra: Mapping[str, Any] | None = None) -> str:
  """Writes `directory/config.json` and `directory/checkpoints/<step>`."""
  if os.path.exists(os.path.join(directory, "checkpoints")):
    raise FileExistsError(f"{directory}/checkpoints already exists; not overwriting it.")
  os.makedirs(directory, exist_ok=True)
  workdir.write_json(os.path.join(directory, CONFIG),
                     {**model_config_dict(model.cfg), **dict(extra or {})})
  with checkpoints.Checkpointer(os.path.join(directory, "checkpoints"), async_save=False) as ck:
    ck.save(step, {"model": nnx.state(model, nnx.Param)})
  return directory


def read_config(directory: str) -> configs.FourMConfig:
  """The saved model config, its modalities as saved (MODEL_FILE, else CONFIG)."""
  path = os.path.join(directory, MODEL_FILE)
  if not os.path.exists(path):
    path = os.path.join(directory, CONFIG)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist (not a saved m4 model).")
  d = workdir.read_json(path)
  if "model" not in d:
    raise workdir.ConfigError(f"{path}: no 'model' entry.")
  return configs.from_config(d["model"], d.get("modalities"))


def load(directory: str, *, mesh=None, rules=sharding.DEFAULT_RULES, field: str = "init",
         **overrides) -> FourM:
  """The model of a pretraining workdir or saved model directory; `overrides`
  replace config fields (e.g. dtype, remat) that do not change the parameters.

  The parameters are the checkpoint's first of PARAM_KEYS. A directory that
  holds no m4 model is a ConfigError of `config.<field>` naming it.
  """
  require(bool(directory), field, f"needs the pretraining workdir (--config.{field}=DIR).")
  if not os.path.exists(os.path.join(directory, CONFIG)):
    raise ConfigError(f"config.{field}: {directory} has no {CONFIG} (not an m4 run).")
  try:
    cfg = read_config(directory)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.{field}: {directory}/{CONFIG}: {e}") from None
  if overrides:
    cfg = cfg.replace(**overrides)
  abstract = nnx.eval_shape(lambda: FourM(cfg, rngs=nnx.Rngs(0)))
  params = nnx.state(abstract, nnx.Param)
  if mesh is not None:
    shardings = sharding.state_shardings(params, mesh, rules)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          params, shardings)
  try:
    ckpt_dir = checkpoints.find_directory(directory)
  except FileNotFoundError as e:
    raise ConfigError(f"config.{field}: {e}") from None
  for key in PARAM_KEYS:
    try:
      restored = checkpoints.restore_subtree(ckpt_dir, params, key=key)
      break
    except KeyError as e:
      error = e
  else:
    raise ConfigError(f"config.{field}: {error.args[0]} (looked for {PARAM_KEYS}).")
  nnx.update(abstract, restored)
  return abstract
