"""The one grain pipeline builder every job uses, set by `config.data`.

    config.data = pipeline.data_config(kind="scenes", dir="/tmp/scenes", batch_size=64)
    it = iter(pipeline.make_dataset(config.data, "train", seed=config.seed, training=True,
                                    transforms=[tokenize, mask]))
    batch = next(it)          # {"rgb": (B, 64, 64, 3) float32, ..., "id": (B,)}
    ckpt.save(step, state, data_iter=it)   # the iterator's position is saved

Training: source -> shuffle (a new order each epoch, from `seed`) -> repeat
forever -> `AlignedCrop` (per-sample RNG from `seed` and the sample's position
in the stream, so results do not depend on the number of workers) -> the
caller's `transforms` -> this process's rows (`position % process_count ==
process_index`; the stream is lazy, so each host reads and transforms only
its samples) -> optional worker processes -> batches of
`batch_size // process_count`, remainder dropped. Global batch t (the
processes' batches side by side, `m4.sharding.to_global`) holds stream
positions [t * batch_size, (t + 1) * batch_size) whatever the number of
processes, with the same crops and random transforms: a run on 2 hosts sees
the samples a run on 1 host sees. The read threads (or worker processes,
batch k made by worker k % N) make whole batches, so grain's per-element
cost falls once a batch; the batches are identical with 0, 1 or N workers.
The saved iterator position counts samples (`SampleCountedState`), as if
batching came after the read, and resumes with any number of workers.
Where samples may be left out (a `Filter`, skipped reads),
samples are read one by one and batched after the read; the saved position
is then grain's own, which resumes only with the same number of workers
(`SameWorkersState`: another number is refused, naming
`config.data.num_workers`).

`aligned_crop=False` leaves out `AlignedCrop` (training and evaluation), for
sources whose samples are not images, e.g. pre-tokenized shards.

Evaluation (`training=False`): the split once, in order, sharded the same way,
with the central crop. Every batch is full (static shapes): the last one is
padded with copies of a real sample, and the batch gets `valid` (B,) bool,
False on padding. All processes get the same number of batches.

A source may return None for a sample it skips (`on_error="skip"`): training
leaves it out; evaluation turns it into padding (valid=False).

The caller's `transforms` are applied in order to each sample: a
`grain.transforms.RandomMap` (gets a per-sample np.random.Generator derived
from `seed`), a `grain.transforms.Map`/`Filter` (a Filter in evaluation makes
batches short), or a plain callable. They must be picklable (cloudpickle) when
`num_workers > 0`; close such an iterator (`it.close()`) when done with it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import grain
import jax
import ml_collections
import numpy as np
from absl import flags
from absl import logging

from m4.data import scenes
from m4.data import sources
from m4.data import transforms as transforms_lib
from m4.workdir import ConfigError, require


def data_config(**overrides) -> ml_collections.ConfigDict:
  """A `config.data` with every field the data layer reads, documented here.

  For kind "scenes" it also holds the generation fields of
  `m4.data.scenes.default_config()` (resolution, max_objects, num_train, ...,
  `workers` = rendering processes), which `scenes.ensure` reads; its `seed` is
  the dataset's generation seed, while order and crops follow the `seed` given
  to `make_dataset` (the config's top-level seed). Any field can be given as a
  keyword (or set later / on the command line).
  """
  c = ml_collections.ConfigDict()
  c.kind = overrides.get("kind", "scenes")  # "scenes" | "tfds" | "folder" (sources.py).
  if c.kind == "scenes":
    c.update(scenes.default_config())
  c.dir = ""  # scenes: made/kept here; folder: <dir>/<split>/<modality>/...; tfds: data_dir.
  c.name = ""  # tfds: dataset name, e.g. "nyu_depth_v2".
  c.tfds_features = ml_collections.ConfigDict()  # tfds: m4 key -> feature path; empty: shipped.
  c.tfds_semseg_reduce_zero = None  # tfds: semseg 0 -> 255, k -> k-1; None: per dataset (sources).
  c.on_error = "raise"  # folder: "raise" | "skip" bad samples (skips are counted).
  c.depth_png_scale = 1000.0  # folder: 16-bit depth png value / this = metres.
  c.modalities = ()  # Raw keys to keep (plus `id`), e.g. ("rgb", "caption"); (): all.
  c.train_split = "train"
  c.eval_split = "validation"
  c.image_size = (64, 64)  # Output (h, w) of every image modality.
  c.upscale = False  # folder: images smaller than image_size are upscaled (False: refused).
  c.crop_scale = (1.0, 1.0)  # Training: area fraction range of the random crop.
  c.crop_ratio = (1.0, 1.0)  # Training: aspect ratio range, relative to image_size's.
  c.flip = False  # Training: mirror half the samples (captions swap left/right).
  c.batch_size = 64  # Global batch size; each process gets batch_size / processes.
  c.num_workers = 0  # Loader worker processes (0: transforms run in this process).
  c.worker_buffer_size = 8  # Samples each worker prepares ahead (rounded up to batches).
  c.min_shm_size = 1 << 20  # Workers send arrays below this many bytes pickled, not in shm.
  c.read_threads = 1  # Threads per process reading and transforming samples.
  c.prefetch = 16  # Samples those threads prepare ahead (rounded up to batches).
  c.update(overrides)
  return c


def mark_flags_parsed():
  """grain's worker processes read absl flags; outside `absl.app` they are unparsed."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def stage_seed(seed: int, stage: int) -> int:
  """Independent 32-bit seeds for the pipeline's random stages."""
  return int(np.random.SeedSequence([int(seed), int(stage)]).generate_state(1)[0])


def _check(data) -> None:
  require(data.get("kind") in sources.KINDS, "data.kind",
          f"{data.get('kind')!r} is not one of {sources.KINDS}.")
  require(int(data.batch_size) > 0, "data.batch_size", f"must be positive, got {data.batch_size}.")
  require(int(data.num_workers) >= 0, "data.num_workers", f"must be >= 0, got {data.num_workers}.")
  require(int(data.read_threads) >= 1, "data.read_threads",
          f"must be >= 1, got {data.read_threads}.")


def geometry(data, *, training: bool) -> transforms_lib.AlignedCrop:
  """The AlignedCrop that `config.data` asks for (central crop if not training)."""
  try:
    return transforms_lib.AlignedCrop(
        data.image_size, crop_scale=data.crop_scale, crop_ratio=data.crop_ratio,
        flip=data.flip, random=training)
  except ValueError as e:
    raise ConfigError(f"config.data: {e}") from None


def _apply(ds: grain.MapDataset, transforms: Sequence[Any], seed: int) -> grain.MapDataset:
  for i, t in enumerate(transforms):
    if isinstance(t, grain.transforms.RandomMap):
      ds = ds.random_map(t, seed=stage_seed(seed, 10 + i))
    elif isinstance(t, grain.transforms.Filter):
      ds = ds.filter(t)
    elif isinstance(t, grain.transforms.Map) or callable(t):
      ds = ds.map(t)
    else:
      raise TypeError(f"transforms[{i}]: {t!r} is not a grain transform or a callable.")
  return ds


class _ReadPadded(grain.transforms.Map):
  """Evaluation: position k of this process -> its sample, or padding."""

  def __init__(self, source, process_index: int, process_count: int):
    self.source, self.index, self.count = source, process_index, process_count
    self._pad = None

  def _padding(self):
    if self._pad is None:
      for i in range(len(self.source)):
        sample = self.source[i]
        if sample is not None:
          self._pad = sample
          break
      else:
        raise ValueError(f"{self.source!r}: no readable sample to pad with.")
    return self._pad

  def map(self, k):
    i = self.index + self.count * int(k)
    sample = self.source[i] if i < len(self.source) else None
    if sample is None:
      return dict(self._padding(), valid=np.False_)
    return dict(sample, valid=np.True_)


def make_dataset(data, split: str, *, seed: int, training: bool,
                 transforms: Sequence[Any] = (), source=None,
                 process_index: int | None = None,
                 process_count: int | None = None,
                 aligned_crop: bool = True) -> grain.IterDataset:
  """The grain dataset of host-local batches of `split` (see module doc).

  Args:
    data: the `config.data` ConfigDict (fields: `data_config`).
    split: split name, e.g. data.train_split.
    seed: the config's seed; shuffling and random crops derive from it.
    training: shuffle + repeat + random crops + drop remainder, or one
      ordered, padded pass with central crops.
    transforms: per-sample transforms applied after the geometry.
    source: a random-access source to use instead of `make_source(data, split)`.
    process_index, process_count: this host's shard (default: jax's).
    aligned_crop: apply the crop of `data` (False: samples pass as read).

  Returns:
    A grain IterDataset; `iter()` of it is a checkpointable DatasetIterator.
  """
  _check(data)
  p = jax.process_index() if process_index is None else int(process_index)
  n_proc = jax.process_count() if process_count is None else int(process_count)
  require(int(data.batch_size) % n_proc == 0, "data.batch_size",
          f"{data.batch_size} does not divide over {n_proc} processes.")
  batch = int(data.batch_size) // n_proc
  source = sources.make_source(data, split) if source is None else source
  n = len(source)
  if n < n_proc:
    raise ConfigError(f"config.data: split {split!r} of {source!r} has {n} samples,"
                      f" fewer than the {n_proc} processes.")
  crop = geometry(data, training=training) if aligned_crop else None
  if training:
    ds = grain.MapDataset.source(source).shuffle(seed=stage_seed(seed, 0)).repeat(None)
    if crop is not None:
      ds = ds.random_map(crop, seed=stage_seed(seed, 1))
    ds = _apply(ds, transforms, seed)
    if n_proc > 1:
      ds = ds[p::n_proc]
  else:
    per_process = math.ceil(math.ceil(n / n_proc) / batch) * batch
    ds = grain.MapDataset.range(per_process).map(_ReadPadded(source, p, n_proc))
    if crop is not None:
      ds = ds.map(lambda x: crop.apply(x, None))
    ds = _apply(ds, transforms, seed)
  ahead = batches_ahead(data, transforms)
  if ahead:
    ds = ds.batch(batch, drop_remainder=training)
  per_element = batch if ahead else 1  # Buffer sizes are set in samples.
  read = grain.ReadOptions(num_threads=int(data.read_threads),
                           prefetch_buffer_size=math.ceil(int(data.prefetch) / per_element))
  it_ds = ds.to_iter_dataset(read)
  workers = int(data.num_workers)
  if workers > 0:
    mark_flags_parsed()
    # Small arrays travel pickled: a shared-memory block per array costs more.
    it_ds = grain.experimental.WithOptionsIterDataset(
        it_ds, grain.experimental.DatasetOptions(min_shm_size=int(data.min_shm_size)))
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers,
        per_worker_buffer_size=math.ceil(int(data.worker_buffer_size) / per_element)))
  if ahead:
    return SampleCountedState(it_ds, batch)
  return SameWorkersState(it_ds.batch(batch, drop_remainder=training))


def batches_ahead(data, transforms: Sequence[Any] = ()) -> bool:
  """Whether whole batches are made in the read threads (grain's
  `MapDataset.batch`, whose per-element cost then falls once a batch, not
  once a sample). Only where no sample can be left out: no `Filter` among
  the transforms and no skipped reads (`data.on_error` "skip")."""
  return (data.get("on_error", "raise") != "skip"
          and not any(isinstance(t, grain.transforms.Filter) for t in transforms))


class SampleCountedState(grain.IterDataset):
  """Batches made ahead, checkpointed as if they were batched after the read.

  The iterator's state counts samples, as grain's does when it batches after
  the prefetch (`{"next_index": samples}`; with workers, per worker), so a
  checkpoint resumes at the same sample whichever way it was written, and
  with any number of workers. A position between two batches (the batch
  size changed) resumes at the next batch, with a warning.
  """

  def __init__(self, parent: grain.IterDataset, batch_size: int):
    super().__init__(parent)
    self.batch_size = int(batch_size)

  def __iter__(self):
    return _SampleCountedIterator(self._parent.__iter__(), self.batch_size)


class _PassThrough(grain.DatasetIterator):
  """The parent's elements and saved state, unchanged (subclasses read states)."""

  def __next__(self):
    return next(self._parent)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class _SampleCountedIterator(_PassThrough):

  def __init__(self, parent, batch_size: int):
    super().__init__(parent)
    self.batch_size = batch_size

  def get_state(self):
    state = self._parent.get_state()
    return state_at(samples_in(state) * self.batch_size, state)

  def set_state(self, state):
    samples = samples_in(state)
    batches = -(-samples // self.batch_size)
    if batches * self.batch_size != samples:
      logging.warning("The saved data position, sample %d, is not at a batch of %d"
                      " (config.data.batch_size): resuming at sample %d.",
                      samples, self.batch_size, batches * self.batch_size)
    self._parent.set_state(state_at(batches, self._parent.get_state()))


class SameWorkersState(grain.IterDataset):
  """Batches made after the read (samples may be left out), checkpointed as
  grain saves them: with worker processes, a position in each worker's own
  stream. Where samples may drop, those streams do not add up to one count
  (as `SampleCountedState`'s do), so the position has no equivalent for
  another number of workers. A state saved with another number is refused
  (ConfigError naming `config.data.num_workers`) before grain reads it,
  which would fail as if the checkpoint were damaged."""

  def __iter__(self):
    return _SameWorkersIterator(self._parent.__iter__())


class _SameWorkersIterator(_PassThrough):

  def set_state(self, state):
    # This run's worker count, from its own state (read without starting a worker).
    saved, here = workers_in(state), workers_in(self._parent.get_state())
    if saved != here:
      raise ConfigError(
          f"the data position was saved with {saved} worker processes and this run has"
          f" {here} (config.data.num_workers). A pipeline that may leave samples out"
          " (a Filter transform, or config.data.on_error 'skip') resumes only with the same"
          f" number: set config.data.num_workers={saved}.")
    super().set_state(state)


def _unresumable(state, why: str = "") -> ConfigError:
  return ConfigError(f"the saved data iterator state {state} is not one m4 can resume"
                     f"{f' ({why})' if why else ''}; the data pipeline changed (config.data,"
                     " or the job's transforms).")


def workers_in(state) -> int:
  """The number of worker processes a grain iterator state was saved with
  (0: grain's single-process `{"next_index": ...}`)."""
  if isinstance(state, dict) and isinstance(state.get("iterators_in_use_states"), list):
    return len(state["iterators_in_use_states"])
  if isinstance(state, dict) and "next_index" in state:
    return 0
  raise _unresumable(state)


def samples_in(state: dict) -> int:
  """How many elements a grain iterator state has returned, with or without
  worker processes (grain's interleave over W workers: element k made by
  worker k % W, each worker's `next_index` counting its own)."""
  workers = workers_in(state)
  try:
    if not workers:
      return int(state["next_index"])
    return sum(int(s["next_index"]) for s in state["iterators_in_use_states"])
  except (KeyError, TypeError) as e:
    raise _unresumable(state, f"no {e}") from None


def state_at(elements: int, like: dict) -> dict:
  """The state of an iterator shaped as `like` (same workers) that has
  returned `elements` elements."""
  workers = workers_in(like)
  if not workers:
    return dict(like, next_index=int(elements))
  if list(like["iterators_in_use_indices"]) != list(range(workers)):
    raise ConfigError(f"the data iterator state {like} is not a round of {workers} workers.")
  return dict(like, next_index_in_cycle=elements % workers,
              iterators_in_use_states=[dict(s, next_index=-(-(elements - w) // workers))
                                       for w, s in enumerate(like["iterators_in_use_states"])])


def make_iterator(data, split: str, **kwargs):
  """`iter(make_dataset(...))`: a checkpointable grain DatasetIterator."""
  return iter(make_dataset(data, split, **kwargs))


def num_eval_batches(data, num_samples: int, process_count: int | None = None) -> int:
  """How many batches an evaluation pass over `num_samples` gives each process."""
  n_proc = jax.process_count() if process_count is None else int(process_count)
  batch = int(data.batch_size) // n_proc
  return math.ceil(math.ceil(num_samples / n_proc) / batch)
