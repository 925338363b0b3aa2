"""Checkpoints with orbax: training state, the grain iterator, and metadata.

    ckpt = checkpoints.Checkpointer(f"{workdir}/checkpoints", max_to_keep=2)
    start = ckpt.latest_step()
    if start is not None:                      # resume
      state, meta = ckpt.restore(abstract_state, data_iter=it)
    ...
    ckpt.save(step, state, data_iter=it, meta={"loss": ...})
    ckpt.close()                               # waits for async saves

A checkpoint is written to a temporary directory and renamed when complete
(orbax's atomic commit), so a crash mid-save never leaves a broken latest
checkpoint. `restore_subtree` reads part of another run's state, e.g. the
model parameters of a pretraining run to initialise a transfer run.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

STATE, DATA, META = "state", "data", "meta"


def _abstract(tree):
  """ShapeDtypeStructs (with shardings when the leaves have them)."""

  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, (np.ndarray, np.generic)):
      return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
    return x

  return jax.tree.map(one, tree)


def _restore_args(target, partial: bool = False):
  """PyTreeRestore into the shapes, dtypes and shardings of `target`."""
  abstract = _abstract(target)
  return ocp.args.PyTreeRestore(
      item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
      partial_restore=partial)


def to_pure(tree):
  """Every nnx.State in `tree` -> nested dicts of arrays (what orbax stores)."""
  if isinstance(tree, nnx.State):
    return nnx.to_pure_dict(tree)
  if isinstance(tree, Mapping):
    return {k: to_pure(v) for k, v in tree.items()}
  return tree


def _fill(target, pure):
  """`pure` back in the structure of `target` (nnx.States where it had them)."""
  if isinstance(target, nnx.State):
    new = jax.tree.map(lambda x: x, target)  # A copy to fill in.
    nnx.replace_by_pure_dict(new, pure)
    return new
  if isinstance(target, Mapping):
    return {k: _fill(target[k], pure[k]) for k in target}
  return pure


class Checkpointer:
  """An orbax CheckpointManager for (state, data iterator, metadata)."""

  def __init__(self, directory: str, *, max_to_keep: int | None = 2,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE: ocp.PyTreeCheckpointHandler(),
                       DATA: grain.checkpoint.CheckpointHandler(),
                       META: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, *, data_iter=None,
           meta: Mapping[str, Any] | None = None, force: bool = True) -> bool:
    items = {STATE: ocp.args.PyTreeSave(to_pure(state)),
             META: ocp.args.JsonSave(dict(meta or {}, step=int(step)))}
    if data_iter is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)

  def restore(self, target, *, step: int | None = None, data_iter=None):
    """Restores into the structure (and shardings) of `target`.

    `target` is a pure dict or nnx.State of arrays or ShapeDtypeStructs; an
    nnx.State comes back as one. A given `data_iter` is restored in place.
    Returns (state, meta).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    items = {STATE: _restore_args(to_pure(target)), META: ocp.args.JsonRestore()}
    if data_iter is not None:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return _fill(target, restored[STATE]), dict(restored[META] or {})

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def find_directory(path: str) -> str:
  """A run's checkpoint directory: `path` itself or `path/checkpoints`."""
  for candidate in (os.path.join(path, "checkpoints"), path):
    if os.path.isdir(candidate) and any(
        name.isdigit() for name in os.listdir(candidate)):
      return candidate
  raise FileNotFoundError(
      f"no orbax checkpoints in {path!r} or {os.path.join(path, 'checkpoints')!r}")


def restore_subtree(path: str, target: Mapping[str, Any], key: str = "model",
                    step: int | None = None):
  """Reads `state[key]` of the run at `path` into the structure of `target`.

  `target` is the subtree (pure dict or nnx.State of arrays or
  ShapeDtypeStructs); nothing else of the checkpoint is read.
  """
  directory = find_directory(path)
  with Checkpointer(directory, read_only=True) as ckpt:
    step = ckpt.latest_step() if step is None else step
    stored = ckpt.manager.item_metadata(step)[STATE]
    stored = getattr(stored, "tree", stored)
    if key not in stored:
      raise KeyError(f"checkpoint {directory}/{step} has no {key!r}; it has {sorted(stored)}")
    args = _restore_args({key: to_pure(target)}, partial=True)
    restored = ckpt.manager.restore(step, args=ocp.args.Composite(**{STATE: args}))
  return _fill({key: target}, restored[STATE])[key]
