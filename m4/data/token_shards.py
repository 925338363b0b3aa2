"""Pre-tokenized datasets: ArrayRecord shards of token grids, one record a sample.

    source = token_shards.TokenShardSource(DIR, "train")
    record = source[0]     # {"id", "crop", "rgb": (V, 8, 8), "caption": (V, 48), ...}
    pick = token_shards.SelectView(source.spec, training=True)   # a grain RandomMap

`m4.jobs.pretokenize` writes them; pretraining reads them. On disk:

    DIR/spec.json        what the shards hold (written first, compared on resume):
                         format, modalities (registry entries), tokenizers
                         ({modality: {path, fingerprint}}), views (crop
                         settings), source (the data config), splits
                         ({split: {num_samples, num_shards, num_views}})
    DIR/<split>/shard-00003-of-00016.array_record
                         samples [3 * n / 16, 4 * n / 16) of the split, in order

A record (msgpack) holds, for V views of the sample (view 0 is the central
full view, the one evaluation uses; views 1.. are random aligned crops):
`crop` float32 (V, 5) = (y0, x0, h, w, flipped) of each view in source
pixels; per image modality its token grids (V, h, w) (uint16, or int32 for
vocabularies over 65536); per pixel modality its images (V, H, W, C) (uint8,
the input of a `pixels` modality such as 4M's rgb@224); per sequence
modality its ids (V, L) (int32, [EOS]-terminated, [PAD]ded; views differ
when a flip swaps left and right);
`text/<modality>` the text of view 0; `id`; and the raw sample's `labels` and
`scene` (of view 0) when it has them.

A shard is written to a hidden temporary file and renamed when complete
(m4.data.record_files), so finished shards are never rewritten and a
half-written one is never read; readers refuse a split with missing shards,
and a damaged shard (truncated, garbled) is a DataError naming it. Samples
that pre-tokenization skipped (`data.on_error = "skip"`) are listed, with
the reason, in `<shard>.skipped.json` beside their shard.

Tokenizers are identified by a fingerprint of their files (`fingerprint`):
a pretraining run that names other tokenizers than the shards were made with
is refused by `check_tokenizers`, naming both.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import grain
import numpy as np
from flax import serialization

from m4 import modalities as modalities_lib
from m4 import tokenizers
from m4 import workdir
from m4.data import record_files
from m4.tokenizers import text
from m4.workdir import ConfigError

FORMAT = "m4.token_shards.v1"
SPEC_FILE = "spec.json"


# ----------------------------------------------------------------------------
# Tokenizer fingerprints.


def _hash_files(paths: list[str], root: str) -> str:
  h = hashlib.sha256()
  for path in sorted(paths):
    h.update(os.path.relpath(path, root).encode() + b"\0")
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    h.update(b"\0")
  return h.hexdigest()[:16]


def fingerprint(path: str) -> str:
  """A short hash of a tokenizer's files: the same weights, the same hash.

  `path` is a VQ tokenizer directory (hashes tokenizer.json and the files of
  the checkpoint it loads) or a text tokenizer's JSON file.
  """
  if os.path.isfile(path):
    return _hash_files([path], os.path.dirname(path))
  spec_path = os.path.join(path, "tokenizer.json")
  if not os.path.exists(spec_path):
    raise FileNotFoundError(f"{path}: neither a tokenizer file nor a directory with"
                            " tokenizer.json.")
  step = workdir.read_json(spec_path).get("step")
  if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
    raise workdir.DataError(f"{spec_path}: 'step' must be a checkpoint step (an integer >= 0),"
                            f" got {step!r}; nothing was read.")
  ckpt = os.path.join(path, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(ckpt) if s.isdigit()) if os.path.isdir(ckpt) else []
  if step is None and steps:
    step = steps[-1]
  files = [spec_path]
  if step is not None:
    for root, _, names in os.walk(os.path.join(ckpt, str(step))):
      files += [os.path.join(root, n) for n in names]
  inside = os.path.realpath(path)
  for f in files:  # Symlinks out of the tokenizer directory are not followed.
    if os.path.commonpath([os.path.realpath(f), inside]) != inside:
      raise workdir.DataError(f"{f}: a symlink to {os.path.realpath(f)}, outside the tokenizer"
                              f" directory {inside}; nothing was read.")
  return _hash_files(files, path)


def tokenizer_entry(modality: str, name_or_path: str | None) -> dict:
  """{path, fingerprint} of the tokenizer of `modality` (None: the registry's).

  Image modalities take a VQ tokenizer name or directory
  (`m4.tokenizers.resolve`); sequences a text tokenizer name or JSON file.
  """
  mod = modalities_lib.get(modality)
  name_or_path = name_or_path or mod.tokenizer
  if mod.is_sequence:
    path = text.resolve(name_or_path)
  else:
    path = tokenizers.resolve(name_or_path)
  path = os.path.abspath(path)
  return {"path": path, "fingerprint": fingerprint(path)}


def check_tokenizers(spec: Mapping[str, Any], wanted: Mapping[str, str | None],
                     directory: str, field: str = "tokenizers") -> None:
  """Raises ConfigError unless the shards' tokenizers are the `wanted` ones.

  Args:
    spec: the shards' spec (`read_spec`).
    wanted: {modality: tokenizer name or path (None: the registry's)} that
      the run's config names, for every modality it reads from the shards.
    directory: the shards' directory (for the message).
    field: the config field `wanted` comes from (for the message).
  """
  stored = spec["tokenizers"]
  for name, want in wanted.items():
    if name not in stored:
      raise ConfigError(f"config.{field}: the token shards in {directory} hold no {name!r};"
                        f" they hold {sorted(stored)}.")
    try:
      entry = tokenizer_entry(name, want)
    except FileNotFoundError as e:
      raise ConfigError(f"config.{field}.{name}: {e}") from None
    if entry["fingerprint"] != stored[name]["fingerprint"]:
      raise ConfigError(
          f"config.{field}.{name}: the token shards in {directory} were made with tokenizer"
          f" {stored[name]['path']} (fingerprint {stored[name]['fingerprint']}), but the"
          f" config names {entry['path']} (fingerprint {entry['fingerprint']}); pre-tokenize"
          " again with this tokenizer or name the one the shards were made with.")


# ----------------------------------------------------------------------------
# Spec and files.


def shard_path(directory: str, split: str, shard: int, num_shards: int) -> str:
  return os.path.join(directory, split, f"shard-{shard:05d}-of-{num_shards:05d}.array_record")


def shard_range(num_samples: int, shard: int, num_shards: int) -> tuple[int, int]:
  """The sample indices [start, end) of `shard`."""
  return shard * num_samples // num_shards, (shard + 1) * num_samples // num_shards


def read_spec(directory: str) -> dict:
  path = os.path.join(directory, SPEC_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {directory} holds no token shards (make them"
                            " with python -m m4.tools.pretokenize or the pretokenize job).")
  spec = workdir.read_json(path)
  if spec.get("format") != FORMAT:
    raise ValueError(f"{path}: format {spec.get('format')!r} is not {FORMAT!r}.")
  return spec


def _diff(a, b, prefix: str = "") -> list[str]:
  """The paths where two JSON-like values differ."""
  if isinstance(a, Mapping) and isinstance(b, Mapping):
    out = []
    for k in sorted(set(a) | set(b)):
      if k not in a or k not in b:
        out.append(f"{prefix}{k}")
      else:
        out += _diff(a[k], b[k], f"{prefix}{k}.")
    return out
  return [] if a == b else [prefix.rstrip(".") or "(root)"]


def check_spec(directory: str, spec: Mapping[str, Any]) -> dict | None:
  """The stored spec if it equals `spec`, None if there is none; writes nothing.

  A directory holding shards of another spec is refused: ConfigError.
  """
  spec = dict(spec, format=FORMAT)
  path = os.path.join(directory, SPEC_FILE)
  if not os.path.exists(path):
    return None
  try:
    stored = workdir.read_json(path)
  except ValueError as e:
    raise workdir.DataError(f"{path}: not readable JSON ({e}).") from None
  canonical = _canonical(spec)
  differ = _diff(stored, canonical)
  if differ:
    what = "; ".join(f"{w}: stored {_get(stored, w)!r}, now {_get(canonical, w)!r}"
                     for w in differ[:4])
    raise ConfigError(
        f"{path}: these token shards were made with other settings ({what}); nothing was"
        " changed. Use a new directory, or the settings the shards were made with.")
  return stored


def write_or_check_spec(directory: str, spec: Mapping[str, Any]) -> dict:
  """Writes `spec` for new shards, or checks it equals the stored one.

  A directory holding shards of another spec is never touched: ConfigError.
  """
  stored = check_spec(directory, spec)
  if stored is not None:
    return stored
  spec = dict(spec, format=FORMAT)
  workdir.write_json(os.path.join(directory, SPEC_FILE), spec)
  return _canonical(spec)


def _canonical(spec):
  """`spec` as it reads back from JSON (tuples -> lists, ...)."""
  return json.loads(json.dumps(workdir._to_builtin(spec), sort_keys=True))  # pylint: disable=protected-access


def _get(tree, path: str):
  for k in path.split("."):
    if not isinstance(tree, Mapping) or k not in tree:
      return None
    tree = tree[k]
  return tree


def missing_shards(directory: str, split: str, spec: Mapping[str, Any]) -> list[int]:
  n = int(spec["splits"][split]["num_shards"])
  return [s for s in range(n) if not os.path.exists(shard_path(directory, split, s, n))]


SKIPPED = ".skipped.json"  # Beside a shard: the samples pre-tokenization left out.


def write_skipped(path: str, skipped: Mapping[int, str]) -> None:
  """Records the samples left out of the shard at `path` (before it is committed)."""
  if skipped:
    workdir.write_json(path + SKIPPED, {"skipped": {str(i): r for i, r in skipped.items()}})
  elif os.path.exists(path + SKIPPED):  # Left by an earlier, killed writer.
    os.remove(path + SKIPPED)


def skipped_samples(directory: str, split: str, spec: Mapping[str, Any]) -> dict[int, str]:
  """{index: reason} of the samples the finished shards of `split` left out."""
  n = int(spec["splits"][split]["num_shards"])
  out = {}
  for s in range(n):
    path = shard_path(directory, split, s, n)
    if os.path.exists(path) and os.path.exists(path + SKIPPED):
      out.update({int(i): r for i, r in workdir.read_json(path + SKIPPED)["skipped"].items()})
  return out


# ----------------------------------------------------------------------------
# Writing.


def remove_stale_partials(directory: str, split: str) -> None:
  """Deletes temp files of `split` left by this host's writers that are gone."""
  record_files.remove_stale_partials(os.path.join(directory, split, "*"))


def encode_record(record: Mapping[str, Any]) -> bytes:
  return serialization.msgpack_serialize(dict(record))


def decode_record(data: bytes) -> dict:
  return serialization.msgpack_restore(data)


def token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 1 << 16 else np.int32


# ----------------------------------------------------------------------------
# Reading.


class TokenShardSource:
  """A grain random-access source over one split's shards (records as dicts)."""

  def __init__(self, directory: str, split: str):
    self.directory = directory
    self.split = split
    self.spec = read_spec(directory)
    if split not in self.spec["splits"]:
      raise ConfigError(f"{directory}: the token shards have no split {split!r}; they have"
                        f" {sorted(self.spec['splits'])}.")
    missing = missing_shards(directory, split, self.spec)
    if missing:
      n = self.spec["splits"][split]["num_shards"]
      raise FileNotFoundError(
          f"{directory}/{split}: shards {missing[:5]}{'...' if len(missing) > 5 else ''} of {n}"
          " are missing (pre-tokenization did not finish); run it again to complete them.")
    n = int(self.spec["splits"][split]["num_shards"])
    self.paths = [shard_path(directory, split, s, n) for s in range(n)]
    try:
      self._source = grain.sources.ArrayRecordDataSource(self.paths)
    except Exception as e:  # pylint: disable=broad-except
      raise self._damaged(self._culprit(), e) from None
    self._ends = None  # Cumulative record counts per shard (for error messages).
    want = (int(self.spec["splits"][split]["num_samples"])
            - len(skipped_samples(directory, split, self.spec)))
    if len(self._source) != want:
      raise workdir.DataError(f"{directory}/{split}: the shards hold {len(self._source)} records,"
                              f" the spec (less the skipped samples) says {want}.")

  def _culprit(self, index: int | None = None) -> str:
    """The shard holding record `index`, or (None) the first that cannot be opened."""
    if index is None:
      for path in self.paths:
        try:
          record_files.num_records(path)
        except Exception:  # pylint: disable=broad-except
          return path
      return f"{self.directory}/{self.split}"
    if self._ends is None:
      self._ends = np.cumsum([record_files.num_records(p) for p in self.paths])
    return self.paths[min(int(np.searchsorted(self._ends, index, side="right")),
                          len(self.paths) - 1)]

  @staticmethod
  def _damaged(path: str, e: BaseException, what: str = "") -> workdir.DataError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return workdir.DataError(
        f"{path}: damaged token shard{what} ({first}); delete it and run the pre-tokenization"
        " again, which rewrites the missing shards only.")

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    try:
      return decode_record(self._source[index])
    except Exception as e:  # pylint: disable=broad-except
      raise self._damaged(self._culprit(index), e, f" (record {index} of the split)") from None

  def __repr__(self) -> str:
    return f"TokenShardSource({self.directory!r}, {self.split!r}, len={len(self)})"


class SelectView(grain.transforms.RandomMap):
  """Record -> sample of one view: what masking reads.

  Training picks one of the record's views uniformly at random (per sample
  and epoch, from grain's seeded RNG); evaluation takes view 0 (central).
  The sample holds, under each modality's name, its int32 token grid (h, w),
  padded ids (L,) or, for pixel modalities, the uint8 image (H, W, C), plus
  `id` (and `valid` in evaluation); with `keep_extras`, also `labels` and
  `scene` (numeric, so they batch).
  """

  def __init__(self, spec: Mapping[str, Any], *, training: bool,
               names: tuple[str, ...] | None = None, keep_extras: bool = False):
    stored = spec["modalities"]
    self.names = tuple(names) if names is not None else tuple(stored)
    for n in self.names:
      if n not in stored:
        raise ConfigError(f"config.masking.modalities: {n!r} is not in the token shards"
                          f" (they hold {sorted(stored)}).")
      registered = modalities_lib.get(n).to_dict()
      saved = {k: (tuple(v) if isinstance(v, list) else v) for k, v in stored[n].items()}
      mine = {k: (tuple(v) if isinstance(v, list) else v) for k, v in registered.items()}
      if saved != mine:
        raise ConfigError(f"modality {n!r}: the token shards were made for {stored[n]},"
                          f" the registry now says {registered}.")
    self.pixels = {n for n in self.names if modalities_lib.get(n).kind == modalities_lib.PIXELS}
    self.training = training
    self.keep_extras = keep_extras

  def random_map(self, record, rng: np.random.Generator) -> dict:
    num_views = len(record["crop"])
    view = int(rng.integers(num_views)) if self.training else 0
    out = {"id": np.int64(record["id"])}
    if "valid" in record:  # Evaluation padding (m4.data.pipeline).
      out["valid"] = record["valid"]
    for n in self.names:
      out[n] = np.asarray(record[n][view], np.uint8 if n in self.pixels else np.int32)
    if self.keep_extras:
      for key in ("labels", "scene"):
        if key in record:
          out[key] = record[key]
    return out
