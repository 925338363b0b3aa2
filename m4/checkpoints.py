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

Restoring checks the stored tree (names, shapes, dtypes) against the target
before reading any array: a checkpoint of another model is a ConfigError
naming the parameter, its stored and its wanted shape. A checkpoint that
cannot be read (truncated or garbled metadata or arrays, non-finite values)
is a CheckpointError naming its step directory; `restore_latest` (resume)
and `restore_subtree` then fall back to the newest checkpoint that restores,
saying which ones they skipped and why. Resume moves the skipped ones aside
to `<directory>_unreadable/<step>` (never deletes them), so that the run can
save those steps again. A failed save (a full disk) is an OSError naming the
checkpoint directory. Checkpointers still open when a job ends, however it
ends, are closed by `close_all` (m4.main), so no orbax thread outlives it.
"""

from __future__ import annotations

import errno
import logging as py_logging
import os
import sys
import time
import weakref
from typing import Any, Mapping

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from m4.workdir import ConfigError, DataError

STATE, DATA, META = "state", "data", "meta"
UNREADABLE = "_unreadable"  # Suffix of the directory skipped checkpoints are moved to.

_OPEN = weakref.WeakSet()  # Checkpointers not yet closed (close_all).


class CheckpointError(DataError):
  """A checkpoint on disk cannot be read; the message names its step directory."""


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


class _NoBackgroundTracebacks(py_logging.Filter):
  """orbax logs an error of its background threads with its traceback, often
  several times, before the main thread gets it (and m4 reports it in one
  line); asyncio logs the failures of tasks nobody awaited. Their log records
  keep their message and lose the traceback."""

  def filter(self, record):
    if record.exc_info and ("/orbax/" in (record.pathname or "") or record.name == "asyncio"):
      record.exc_info, record.exc_text = None, None
    return True


logging.get_absl_handler().addFilter(_NoBackgroundTracebacks())


def _unraisable(hook):
  """When one read of an orbax restore fails, the reads still in flight call
  back into its event loop, closed by then: one 'Event loop is closed'
  traceback each (the failure itself is reported). Those are dropped."""

  def filtered(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
      hook(unraisable)

  return filtered


sys.unraisablehook = _unraisable(sys.unraisablehook)


def _key(k) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaves(tree) -> dict[str, Any]:
  """{"a/b/0": leaf} of a pytree of arrays, ShapeDtypeStructs or orbax metadata."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key(k) for k in path): leaf for path, leaf in flat}


def _describe(x) -> str:
  return f"{tuple(x.shape)} {np.dtype(x.dtype).name}"


def _kind(dtype) -> str:
  """float / int / bool...: restoring casts within a kind (float64 -> float32), not across."""
  for kind, base in (("float", jax.numpy.inexact), ("int", jax.numpy.integer),
                     ("bool", jax.numpy.bool_)):
    if jax.numpy.issubdtype(dtype, base):
      return kind
  return str(dtype)


def check_fits(stored, target, where: str) -> None:
  """Raises ConfigError unless every leaf of `target` is stored in `stored`
  (orbax metadata) with its shape and a dtype of its kind (float, int, ...);
  names the first that differs."""
  have, want = _leaves(stored), _leaves(target)
  missing = [k for k in want if k not in have]
  differ = [k for k in want if k in have and hasattr(have[k], "shape") and hasattr(want[k], "shape")
            and (tuple(have[k].shape) != tuple(want[k].shape)
                 or _kind(have[k].dtype) != _kind(want[k].dtype))]
  if differ:
    k = differ[0]
    more = f" (and {len(differ) - 1} more parameters)" if len(differ) > 1 else ""
    raise ConfigError(f"{where} holds {k} as {_describe(have[k])}, but the config wants"
                      f" {_describe(want[k])}{more}: it is a checkpoint of another model.")
  if missing:
    raise ConfigError(f"{where} has no {missing[0]}"
                      f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}:"
                      " it is a checkpoint of another model.")


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


def _is_state(x) -> bool:
  return isinstance(x, nnx.State)


def to_pure(tree):
  """Every nnx.State in the pytree `tree` -> nested dicts of arrays (what orbax stores)."""
  return jax.tree.map(lambda x: nnx.to_pure_dict(x) if _is_state(x) else x, tree,
                      is_leaf=_is_state)


def from_pure(target, pure):
  """The inverse of `to_pure`: `pure` in the structure of `target`, with
  nnx.States where `target` has them."""

  def fill(t, p):
    if not _is_state(t):
      return p
    new = jax.tree.map(lambda x: x, t)  # A copy to fill in.
    nnx.replace_by_pure_dict(new, p)
    return new

  return jax.tree.map(fill, target, pure, is_leaf=_is_state)


def _check_finite(tree, where: str) -> None:
  """CheckpointError naming the first floating leaf with NaN or inf (what
  garbled array bytes decode to; m4 never saves non-finite values)."""
  for k, x in _leaves(tree).items():
    if hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.inexact):
      if not bool(jax.numpy.isfinite(x).all()):
        raise CheckpointError(f"{where}: {k} holds NaN or inf (a damaged file, or a diverged"
                              " run's).")


def _write_error(e: BaseException, where: str) -> OSError:
  """An orbax / tensorstore write failure as an OSError naming `where`."""
  text = str(e)
  code = errno.ENOSPC if ("No space left" in text or "os_error_code='28'" in text) else (
      getattr(e, "errno", None) or errno.EIO)
  reason = os.strerror(code) if code == errno.ENOSPC else _first_line(e)
  return OSError(code, f"{where}: cannot write the checkpoint: {reason}")


class Checkpointer:
  """An orbax CheckpointManager for (state, data iterator, metadata)."""

  def __init__(self, directory: str, *, max_to_keep: int | None = 2,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    options = ocp.CheckpointManagerOptions(  # The directory is made by the first save.
        max_to_keep=max_to_keep, create=False, read_only=read_only,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE: ocp.PyTreeCheckpointHandler(),
                       DATA: grain.checkpoint.CheckpointHandler(),
                       META: ocp.JsonCheckpointHandler()})
    self._closed = False
    _OPEN.add(self)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def save(self, step: int, state, *, data_iter=None,
           meta: Mapping[str, Any] | None = None, force: bool = True) -> bool:
    items = {STATE: ocp.args.PyTreeSave(to_pure(state)),
             META: ocp.args.JsonSave(dict(meta or {}, step=int(step)))}
    if data_iter is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
    try:  # Also raises the failure of the previous (asynchronous) save.
      os.makedirs(self.directory, exist_ok=True)
      return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)
    except (OSError, ValueError, RuntimeError) as e:
      raise _write_error(e, self.directory) from None

  def stored_state(self, step: int):
    """The orbax metadata tree of `state` at `step` (CheckpointError if unreadable)."""
    try:
      stored = self.manager.item_metadata(step)[STATE]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{self.step_dir(step)}: cannot read the checkpoint's metadata:"
                            f" {_first_line(e)}") from None
    stored = getattr(stored, "tree", stored)
    if not isinstance(stored, Mapping):
      raise CheckpointError(f"{self.step_dir(step)}: cannot read the checkpoint's metadata.")
    return stored

  def restore(self, target, *, step: int | None = None, data_iter=None):
    """Restores into the structure (and shardings) of `target`.

    `target` is a pytree of arrays or ShapeDtypeStructs; its nnx.States come
    back as States (`to_pure`, `from_pure`). A given `data_iter` is restored in place.
    Returns (state, meta). Raises ConfigError if the checkpoint holds other
    names, shapes or dtypes, or a data position `data_iter` cannot take;
    CheckpointError if it cannot be read.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    where = self.step_dir(step)
    pure = to_pure(target)
    check_fits(self.stored_state(step), pure, f"checkpoint {where}")
    items = {STATE: _restore_args(pure), META: ocp.args.JsonRestore()}
    if data_iter is not None:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except ConfigError as e:  # The data iterator's saved state does not fit the config.
      raise ConfigError(f"{where}: {e}") from None
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{where}: cannot read the checkpoint: {_first_line(e)}") from None
    _check_finite(restored[STATE], where)
    return from_pure(target, restored[STATE]), dict(restored[META] or {})

  def restore_latest(self, target, *, data_iter=None):
    """Resume: (state, meta, step) of the newest checkpoint that restores, or
    None if there is none. Unreadable newer ones are skipped (a warning says
    which and why) and moved aside unless read-only; a config that does not
    fit is a ConfigError, not a reason to skip."""
    skipped = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, meta = self.restore(target, step=step, data_iter=data_iter)
      except CheckpointError as e:
        skipped.append(step)
        warn(f"skipping checkpoint {step}: {e}")
        continue
      for s in skipped:
        self._set_aside(s)
      return state, meta, step
    if skipped:
      raise CheckpointError(f"{self.directory}: none of the checkpoints {sorted(skipped)}"
                            " can be read (see the warnings above).")
    return None

  def _set_aside(self, step: int) -> None:
    """Moves an unreadable checkpoint out of the way (never deletes it)."""
    if self.read_only:
      return
    dest = os.path.join(self.directory + UNREADABLE, str(step))
    if os.path.exists(dest):
      dest += time.strftime(".%Y%m%d-%H%M%S")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      os.replace(self.step_dir(step), dest)
      warn(f"moved the unreadable checkpoint {self.step_dir(step)} to {dest}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"m4 set aside {self.directory} {step}")
    self.manager.reload()

  def wait(self):
    try:
      self.manager.wait_until_finished()
    except (OSError, ValueError, RuntimeError) as e:
      raise _write_error(e, self.directory) from None

  def close(self):
    """Waits for the last save and stops orbax's threads (also after an error)."""
    if self._closed:
      return
    self._closed = True
    _OPEN.discard(self)
    try:
      self.wait()
    finally:
      self.manager.close()

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *exc):
    if exc_type is None:
      self.close()
      return
    try:  # The error in flight is the one to report.
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("m4: closing %s: %s", self.directory, _first_line(e))


def warn(message: str) -> None:
  """A warning the user sees: one line on stderr."""
  print(f"m4: warning: {message}", file=sys.stderr, flush=True)


def close_all() -> None:
  """Closes every Checkpointer not closed yet (end of a job, whatever ended it).

  Errors of these closes are logged, not raised: the job's own error, if
  any, is the one to report.
  """
  for ckpt in list(_OPEN):
    try:
      ckpt.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("m4: closing %s: %s", ckpt.directory, _first_line(e))


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
  ShapeDtypeStructs); nothing else of the checkpoint is read. Names, shapes
  and dtypes are checked against the stored ones first (ConfigError naming
  the parameter). Without `step`, the newest checkpoint that can be read is
  used; unreadable newer ones are skipped with a warning.
  """
  directory = find_directory(path)
  with Checkpointer(directory, read_only=True) as ckpt:
    steps = [step] if step is not None else sorted(ckpt.all_steps(), reverse=True)
    for s in steps:
      try:
        return _restore_subtree(ckpt, s, target, key)
      except CheckpointError as e:
        if step is not None:
          raise
        warn(f"skipping checkpoint {s}: {e}")
    raise CheckpointError(f"{directory}: none of the checkpoints {sorted(steps)} can be read"
                          " (see the warnings above).")


def _restore_subtree(ckpt: Checkpointer, step: int, target, key: str):
  where = ckpt.step_dir(step)
  stored = ckpt.stored_state(step)
  if key not in stored:
    raise KeyError(f"checkpoint {where} has no {key!r}; it has {sorted(stored)}")
  pure = to_pure(target)
  check_fits(stored[key], pure, f"checkpoint {where}")
  args = _restore_args({key: pure}, partial=True)
  try:
    restored = ckpt.manager.restore(step, args=ocp.args.Composite(**{STATE: args}))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"{where}: cannot read the checkpoint: {_first_line(e)}") from None
  _check_finite(restored[STATE], where)
  return from_pure({key: target}, restored[STATE])[key]
