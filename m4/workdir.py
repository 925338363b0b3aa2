"""What every job writes to its work directory, and how.

    DIR/config.json      the resolved config (an earlier, different one is kept)
    DIR/metrics.jsonl    one JSON object per logging step: {"step": ..., ...}
    DIR/events.*         TensorBoard (clu metric writers)
    DIR/summary.json     written last: the job's figures and pictures; its
                         presence marks the job done (the quickstart skips it)

Only process 0 writes; other processes log nothing.

A job validates its config against what the workdir holds (checkpoints,
shards, an earlier config) before it writes anything, `write_config`
first: a refused run leaves the workdir byte for byte as it was.
`check_workdir` refuses a path that cannot be a workdir before that.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np

SUMMARY = "summary.json"


class ConfigError(ValueError):
  """A config field or input file is wrong; the message names it."""


class DataError(ValueError):
  """An input file (data, token shard, checkpoint) is damaged or unreadable;
  the message names it."""


def require(condition: bool, field: str, message: str):
  """Raises ConfigError naming `field` unless `condition` holds."""
  if not condition:
    raise ConfigError(f"config.{field}: {message}")


def require_fields(config, fields, example: str, prefix: str = ""):
  """Raises ConfigError naming the first of `fields` that `config` lacks (a
  job reads them all; `example` is a config file that writes them)."""
  for field in fields:
    require(field in config, prefix + field, f"is required (see {example}).")


def _to_builtin(x):
  if isinstance(x, Mapping) or hasattr(x, "to_dict"):
    d = x.to_dict() if hasattr(x, "to_dict") else x
    return {str(k): _to_builtin(v) for k, v in d.items()}
  if isinstance(x, (list, tuple)):
    return [_to_builtin(v) for v in x]
  if isinstance(x, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if x is None or isinstance(x, (bool, int, float, str)):
    return x
  return repr(x)


def _write_failed(e: OSError, path: str) -> OSError:
  """`e` as an OSError whose message names `path` (f.write does not)."""
  return OSError(e.errno, f"cannot write {path}: {e.strerror or e}")


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (temp file + rename): never a half-written file."""
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "w") as f:
      json.dump(_to_builtin(obj), f, indent=1, sort_keys=True)
      f.write("\n")
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise _write_failed(e, path) from None


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def check_workdir(workdir: str) -> None:
  """ConfigError unless `workdir` is, or can be made, a writable directory:
  not a file, not under a file, not read-only. Writes nothing."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir: {workdir} is a file, not a directory.")
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ConfigError(f"--workdir: {workdir} cannot be made: {parent} is a file.")
  if not os.access(parent, os.W_OK | os.X_OK):
    what = "is" if parent == path else f"would be made in {parent}, which is"
    raise ConfigError(f"--workdir: {workdir} {what} not writable (read-only).")


def write_config(config, workdir: str) -> None:
  """Writes DIR/config.json; a different earlier config is kept beside it.

  Jobs call it once their config is validated against the workdir's
  contents, before anything else is written.
  """
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  new = _to_builtin(config)
  if os.path.exists(path):
    try:
      old = read_json(path)
    except (OSError, ValueError):
      old = None
    if old == new:
      return
    os.replace(path, os.path.join(workdir, f"config.{time.strftime('%Y%m%d-%H%M%S')}.json"))
  write_json(path, new)


def is_done(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, SUMMARY))


def read_summary(workdir: str) -> dict:
  return read_json(os.path.join(workdir, SUMMARY))


def write_summary(workdir: str, summary: Mapping[str, Any]) -> dict:
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, SUMMARY), summary)
  return dict(summary)


def format_summary(summary: Mapping[str, Any], indent: str = "") -> str:
  """Human-readable nested summary: figures rounded, paths as they are."""
  lines = []
  for k, v in summary.items():
    if isinstance(v, Mapping):
      lines.append(f"{indent}{k}:")
      lines.append(format_summary(v, indent + "  "))
    elif isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v):
      lines.append(f"{indent}{k}:")  # Sentences, one a line.
      lines.extend(f"{indent}  - {x}" for x in v)
    elif isinstance(v, float):
      lines.append(f"{indent}{k}: {v:.4g}")
    else:
      lines.append(f"{indent}{k}: {v}")
  return "\n".join(lines)


def _format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricLogger:
  """metrics.jsonl + TensorBoard + a progress line with steps/s and ETA.

      logger = MetricLogger(workdir, total_steps=1000)
      logger.write(step, {"loss": 2.3, "lr": 1e-3})
      logger.close()

  `write` adds `steps_per_sec` (since the previous write) to what it logs.
  The progress line goes to stderr; set `quiet=True` to mute it.
  """

  def __init__(self, workdir: str, total_steps: int | None = None, *,
               name: str = "", quiet: bool = False, tensorboard: bool = True):
    self.workdir = workdir
    self.total_steps = total_steps
    self.name = name
    self.quiet = quiet
    self._writer = None
    self._jsonl = None
    self._last = None  # (step, time) of the previous write.
    self.is_writer = jax.process_index() == 0
    if self.is_writer:
      path = os.path.join(workdir, "metrics.jsonl")
      try:
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(path, "a")
      except OSError as e:
        raise _write_failed(e, path) from None
      if tensorboard:
        # Heavy (clu's writers import TensorFlow); only TensorBoard logging needs it.
        from clu import metric_writers  # pylint: disable=g-import-not-at-top
        self._writer = metric_writers.create_default_writer(
            workdir, just_logging=False, asynchronous=False)

  def write(self, step: int, metrics: Mapping[str, Any], *, progress: bool = True) -> dict:
    now = time.time()
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
    if self._last is not None and step > self._last[0]:
      scalars.setdefault("steps_per_sec", (step - self._last[0]) / max(now - self._last[1], 1e-9))
    self._last = (step, now)
    if self.is_writer:
      try:
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._jsonl.flush()
      except OSError as e:
        raise _write_failed(e, os.path.join(self.workdir, "metrics.jsonl")) from None
      if self._writer is not None:
        self._writer.write_scalars(int(step), scalars)
      if progress and not self.quiet:
        print(self.progress_line(step, scalars), file=sys.stderr, flush=True)
    return scalars

  def progress_line(self, step: int, scalars: Mapping[str, float]) -> str:
    parts = [f"{self.name} " if self.name else "", f"step {step}"]
    if self.total_steps:
      parts.append(f"/{self.total_steps}")
    shown = [k for k in scalars if k != "steps_per_sec"][:6]
    parts += [f" | {k} {scalars[k]:.4g}" for k in shown]
    rate = scalars.get("steps_per_sec")
    if rate:
      parts.append(f" | {rate:.2f} steps/s")
      if self.total_steps:
        parts.append(f" | ETA {_format_duration((self.total_steps - step) / rate)}")
    return "".join(parts)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]):
    """Images as (N, H, W, C) float in [0, 1] or uint8, to TensorBoard."""
    if self.is_writer and self._writer is not None:
      self._writer.write_images(int(step), {k: np.asarray(v) for k, v in images.items()})

  def close(self):
    writer, jsonl = self._writer, self._jsonl
    self._writer = self._jsonl = None
    try:
      if writer is not None:
        writer.flush()
        writer.close()
    finally:
      if jsonl is not None:
        try:
          jsonl.close()
        except OSError as e:
          raise _write_failed(e, os.path.join(self.workdir, "metrics.jsonl")) from None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_metrics(workdir: str) -> list[dict]:
  """The rows of DIR/metrics.jsonl (a torn last line is skipped)."""
  rows = []
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        continue
  return rows
