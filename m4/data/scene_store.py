"""The scenes dataset on disk: spec.json, one ArrayRecord file of msgpack
records a split, and ScenesSource, the grain source that reads one split."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Mapping

import grain
import numpy as np
from flax import serialization

from m4 import workdir
from m4.data.scene_spec import SceneSpec, check_split

SPEC_FILE = "spec.json"


def split_path(data_dir: str, split: str) -> str:
  """The ArrayRecord file of `split` in `data_dir`."""
  check_split(split)
  return os.path.join(data_dir, f"{split}.array_record")


def encode(sample: Mapping[str, Any]) -> bytes:
  """A sample dict as one msgpack record."""
  return serialization.msgpack_serialize(dict(sample))


def decode(record: bytes) -> dict:
  """A stored record back to the sample dict `render` made (writeable arrays)."""
  def own(x):
    if isinstance(x, dict):
      return {k: own(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
      return np.array(x)  # frombuffer views are read-only.
    return x

  return own(serialization.msgpack_restore(record))


def read_spec(data_dir: str) -> SceneSpec:
  """The SceneSpec of the dataset in `data_dir`."""
  path = os.path.join(data_dir, SPEC_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {data_dir} is not a scenes dataset (make one with"
        " `python -m m4.data.scenes --out DIR` or scenes.ensure).")
  return spec_from_json(path, workdir.read_json(path))


def spec_from_json(path: str, stored: Mapping[str, Any]) -> SceneSpec:
  """The SceneSpec of a stored spec.json (read from `path`, named in errors)."""
  try:
    return SceneSpec(**{f.name: stored[f.name] for f in dataclasses.fields(SceneSpec)
                        if f.name != "extras"}, extras=tuple(stored.get("extras", ())))
  except (KeyError, TypeError, ValueError) as e:
    raise workdir.ConfigError(f"{path}: not a valid scenes spec ({e!r}).") from None


class ScenesSource:
  """A grain random-access source of one split's raw samples.

      source = ScenesSource("/tmp/scenes", "train")
      len(source), source[0]["rgb"].shape  # (num_train, (64, 64, 3))
  """

  def __init__(self, data_dir: str, split: str):
    check_split(split)
    self.data_dir = data_dir
    self.split = split
    self.spec = read_spec(data_dir)
    path = split_path(data_dir, split)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"{path} not found: the dataset in {data_dir} is incomplete; run"
          " scenes.ensure(data_dir, config) again to finish it.")
    self._source = grain.sources.ArrayRecordDataSource([path])

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return decode(self._source[index])

  def __iter__(self) -> Iterator[dict]:
    for i in range(len(self)):
      yield self[i]

  def __repr__(self) -> str:
    return f"ScenesSource(data_dir={self.data_dir!r}, split={self.split!r}, len={len(self)})"
