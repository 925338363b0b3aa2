"""Writes scenes datasets: write_split renders one split into its ArrayRecord
file (a temp file renamed when complete); ensure makes or reuses a dataset."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from typing import Any, Mapping

from tqdm import tqdm

from m4 import workdir
from m4.data import record_files
from m4.data.scene_render import render
from m4.data.scene_spec import SPLITS, SceneSpec, check_split
from m4.data.scene_store import SPEC_FILE, encode, spec_from_json, split_path


def _render_record(job) -> bytes:
  index, split, render_args = job
  return encode(render(index, split=split, **render_args))


class _Renderer:
  """Maps _render_record over jobs, in order, in this process or a pool."""

  def __init__(self, workers: int = 1):
    self.workers = workers
    self._pool = None

  def __enter__(self):
    if self.workers > 1:
      self._pool = multiprocessing.get_context("spawn").Pool(self.workers)
    return self

  def __exit__(self, *exc):
    if self._pool is not None:
      self._pool.terminate()
      self._pool = None

  def map(self, jobs):
    if self._pool is None:
      return map(_render_record, jobs)
    return self._pool.imap(_render_record, jobs, chunksize=16)


def write_split(data_dir: str, spec: SceneSpec, split: str, *, workers: int = 1,
                progress: bool = True, renderer: _Renderer | None = None) -> dict:
  """Renders and writes one split (temp file, renamed when complete); a split
  that exists is never rewritten (FileExistsError).

  Returns {"samples", "seconds", "samples_per_sec"}.
  """
  if renderer is None:
    with _Renderer(workers) as renderer:
      return write_split(data_dir, spec, split, progress=progress, renderer=renderer)
  record_files.remove_stale_partials(split_path(data_dir, split))
  n = spec.num(split)
  t0 = time.time()
  with record_files.RecordWriter(split_path(data_dir, split)) as writer:
    records = renderer.map((i, split, spec.render_args()) for i in range(n))
    for record in tqdm(records, total=n, desc=f"scenes {split}", unit="sample",
                       disable=not progress, file=sys.stderr, mininterval=1.0):
      writer.write(record)
    writer.commit()
  seconds = time.time() - t0
  return {"samples": n, "seconds": round(seconds, 2), "samples_per_sec": n / max(seconds, 1e-9)}


def _compare_spec(data_dir: str, stored: Mapping[str, Any], spec: SceneSpec,
                  fields: list[str]):
  wanted = spec.to_json()
  for key in ["renderer_version"] + fields:
    if stored.get(key) != wanted.get(key):  # `extras` is absent when there are none.
      raise workdir.ConfigError(
          f"{data_dir} holds a scenes dataset made with {key}={stored.get(key)!r}, but the"
          f" config asks for {key}={wanted.get(key)!r}. Use another directory, or delete that"
          " dataset yourself; nothing was changed.")


def ensure(data_dir: str, config: Mapping[str, Any] | None = None, *,
           splits: tuple[str, ...] = SPLITS, progress: bool = True,
           stats: dict | None = None) -> str:
  """Makes the dataset `config` describes in `data_dir`, or reuses it.

  Args:
    data_dir: the dataset directory (created if missing; other files in it are
      left alone).
    config: a data config (ConfigDict or dict) with SceneSpec fields
      (resolution, min_objects, max_objects, seed, antialias, num_train,
      num_validation, num_test, extras) and optionally `workers` (processes that
      render; 1 = this one). Other fields are ignored. A field the config sets
      must match an existing dataset; a field it leaves out (or None) accepts
      what is stored, and takes SceneSpec's default for a new dataset.
    splits: the splits to write if missing (others are only checked).
    progress: show a tqdm bar per split.
    stats: if given, filled with {split: write_split(...) figures} for the
      splits written now.

  Returns:
    data_dir.

  Raises:
    m4.workdir.ConfigError: the directory holds a dataset made with other
      parameters (the message names the field), or split files without a
      spec, or a split with the wrong number of records. Nothing is changed.
  """
  try:
    spec = SceneSpec.from_config(config)
  except ValueError as e:
    raise workdir.ConfigError(f"config.data: {e}") from None
  workers = (config or {}).get("workers", 1)
  workers = 1 if workers is None else workers
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
    raise workdir.ConfigError(f"config.data.workers: must be an integer >= 1, got {workers!r}.")
  if not data_dir:
    raise workdir.ConfigError("config.data.dir: the scenes dataset needs a directory.")
  os.makedirs(data_dir, exist_ok=True)
  spec_path = os.path.join(data_dir, SPEC_FILE)
  present = [s for s in SPLITS if os.path.exists(split_path(data_dir, s))]
  if os.path.exists(spec_path):
    try:
      stored = workdir.read_json(spec_path)
    except ValueError as e:
      raise workdir.ConfigError(f"{spec_path}: unreadable scenes spec ({e}).") from None
    _compare_spec(data_dir, stored, spec, list(SceneSpec.given(config)))
    spec = spec_from_json(spec_path, stored)
  elif present:
    raise workdir.ConfigError(
        f"{data_dir} holds {', '.join(s + '.array_record' for s in present)} but no"
        f" {SPEC_FILE}: not a scenes dataset m4 made, or a damaged one. Use another"
        " directory; nothing was changed.")
  else:
    workdir.write_json(spec_path, spec.to_json())
  for split in splits:
    check_split(split)
  for split in SPLITS:
    record_files.remove_stale_partials(split_path(data_dir, split))
  missing = []
  for split in SPLITS:
    path = split_path(data_dir, split)
    if not os.path.exists(path):
      if split in splits:
        missing.append(split)
      continue
    found = record_files.num_records(path)
    if found != spec.num(split):
      raise workdir.ConfigError(
          f"{path} holds {found} records, but {spec_path} says num_{split}="
          f"{spec.num(split)}: the dataset is damaged. Nothing was changed.")
  if missing:
    with _Renderer(workers) as renderer:
      for split in missing:
        figures = write_split(data_dir, spec, split, progress=progress, renderer=renderer)
        if stats is not None:
          stats[split] = figures
  return data_dir
