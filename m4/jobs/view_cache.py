"""Training on cached views: each labelled sample's few training inputs, made once.

When the training crop is fixed up to a horizontal flip (`crop_scale` and
`crop_ratio` (1, 1): the transfer configs' setting), every input a run can
see is one of at most two views of a labelled sample. `build` makes what the
train step reads for every view of every labelled sample once:

- for a fine-tuning or a conv net, the encoder's batch (`make` is the run's
  m4.models.transfer.EncoderInputs): no image is read, cropped or tokenized
  again;
- for a probe, the frozen encoder's output (`features_of`): nothing is
  encoded again either.

`ViewCache.batch` then draws each step's samples and flips as the loader does
(a fresh permutation of the labelled samples each epoch, each one mirrored
with probability 1/2), so the run trains on the same distribution of inputs
at a fraction of the cost. The draw is a pure function of (seed, step), so a
resumed run continues it without any iterator state.

`uncached_reason` says why a run cannot use a cache (a random crop, several
processes), as does `Uncacheable` from `build` (an image whose training crop
could shift by a pixel, a cache too big for host memory); the job then
trains from the loader.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from m4.data import pipeline

# The most host memory (bytes) one cache may take while it is built.
MAX_BYTES = 4 << 30


class Uncacheable(ValueError):
  """A sample has no finite set of training views, or they would not fit in memory."""


def uncached_reason(data) -> str:
  """Why a run on this data cannot train from cached views ("" if it can)."""
  if jax.process_count() > 1:
    return "several processes"
  if not pipeline.geometry(data, training=True).fixed:
    return f"random crops (data.crop_scale {tuple(data.crop_scale)})"
  return ""


def _epoch_order(seed: int, epoch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(sample order, mirrored?) of one epoch."""
  rng = np.random.default_rng([int(seed), int(epoch)])
  return rng.permutation(n), rng.random(n) < 0.5


class ViewCache:
  """Every view's train-step inputs and target; batches drawn by step.

  inputs: a tree of (N, V, ...) arrays; targets: (N, V, ...); V is 1 (no
  flip) or 2 (view 1 mirrored).
  """

  def __init__(self, inputs: Any, targets: np.ndarray, *, batch_size: int, seed: int):
    self.inputs, self.targets = inputs, targets
    self.batch_size, self.seed = int(batch_size), int(seed)
    self.seconds = 0.0  # What building it took (set by `build`).
    self._epoch = (None, None, None)

  def __len__(self) -> int:
    return len(self.targets)

  @property
  def num_views(self) -> int:
    return self.targets.shape[1]

  def draw(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(sample, view) indices of training step `step` (1-based)."""
    n, b = len(self), self.batch_size
    positions = (int(step) - 1) * b + np.arange(b)
    samples, views = np.empty(b, np.int64), np.zeros(b, np.int64)
    for epoch in np.unique(positions // n):
      if self._epoch[0] != epoch:
        self._epoch = (epoch, *_epoch_order(self.seed, epoch, n))
      _, order, mirrored = self._epoch
      here = positions // n == epoch
      samples[here] = order[positions[here] % n]
      if self.num_views > 1:
        views[here] = mirrored[positions[here] % n]
    return samples, views

  def batch(self, step: int) -> tuple[Any, np.ndarray]:
    """(inputs, targets) of training step `step`."""
    s, v = self.draw(step)
    return jax.tree.map(lambda x: x[s, v], self.inputs), self.targets[s, v]


@functools.lru_cache(maxsize=None)
def _features_fn(graphdef):
  """The jitted `features` of a model structure (compiled once per shape)."""
  return jax.jit(lambda state, batch: nnx.merge(graphdef, state).features(batch))


def features_of(model, inputs: Callable[[dict], dict], place: Callable) -> Callable[[dict], Any]:
  """`build`'s `make` for probes: `model.features` (a frozen encoder's output
  and valid mask) of each view; place: host arrays -> arrays on the mesh."""
  graphdef, state = nnx.split(model)
  features_fn = _features_fn(graphdef)
  return lambda raw: features_fn(state, place(inputs(raw)))


def build(make: Callable[[dict], Any], targets: Callable[[dict], Any], data, source, *,
          seed: int, check: Callable[[np.ndarray], None]) -> ViewCache:
  """The cache of `make` over every view of every sample of `source`.

  make: a raw batch of `data.batch_size` views -> a tree of per-view arrays
  (an EncoderInputs, or `features_of`); targets: raw batch -> the task's targets;
  check: called once with all targets.
  """
  t0 = time.time()
  crop = pipeline.geometry(data, training=True)
  size = int(data.batch_size)
  outs, pending, num_views = [], [], None

  def flush():
    padded = pending + [pending[-1]] * (size - len(pending))  # Whole batches: one compile.
    raw = jax.tree.map(lambda *x: np.stack(x), *padded)
    n = len(pending)
    made = jax.tree.map(lambda x: np.asarray(x)[:n], make(raw))
    outs.append((made, np.asarray(targets(raw))[:n]))
    pending.clear()
    if len(outs) == 1:  # The first batch tells what a view takes.
      view_bytes = sum(x.nbytes for x in jax.tree.leaves(outs[0])) / n
      if 2 * view_bytes * num_views * len(source) > MAX_BYTES:  # Kept twice while joined.
        raise Uncacheable(f"the views of {len(source)} samples would not fit in"
                          f" {MAX_BYTES >> 30} GiB")

  for i in range(len(source)):
    sample = source[i]
    if sample is None:  # Unreadable: the loader skips it too.
      continue
    try:
      views = crop.views(sample)
    except ValueError as e:
      raise Uncacheable(str(e)) from None
    num_views = num_views or len(views)
    for view in views:
      pending.append(view)
      if len(pending) == size:
        flush()
  if pending:
    flush()
  if not outs:
    raise ValueError(f"{source!r}: no readable sample to train on.")
  made, targs = jax.tree.map(lambda *x: np.concatenate(x), *outs)
  outs.clear()
  check(targs)
  per_sample = lambda x: x.reshape(-1, num_views, *x.shape[1:])
  cache = ViewCache(jax.tree.map(per_sample, made), per_sample(targs), batch_size=size,
                    seed=seed)
  cache.seconds = time.time() - t0
  return cache
