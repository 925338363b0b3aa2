"""Linear probes on cached encoder features: the same training, without re-encoding.

A probe's encoder is frozen, so its output for a given input never changes.
When the training crop is fixed up to a horizontal flip (`crop_scale` and
`crop_ratio` (1, 1): the transfer configs' setting), every input a probe can
see is one of at most two views of a labelled sample. `encode` runs the
encoder once over every view of every labelled sample; `FeatureCache.batch`
then draws each step's samples and flips as the loader does (a fresh
permutation of the labelled samples each epoch, each one mirrored with
probability 1/2), so the head trains on the same distribution of inputs at a
fraction of the cost (no image is read, cropped, tokenized or encoded again).
The draw is a pure function of (seed, step), so a resumed run continues it
without any iterator state.

`uncached_reason` says why a run cannot use the cache (a random crop,
several processes, too little memory), as does `Uncacheable` from `encode`
(an image whose training crop could shift by a pixel); the job then trains
the probe through the encoder as before.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from m4.data import pipeline

# The most host memory (bytes) one arm's cache may take while it is built.
MAX_BYTES = 4 << 30


class Uncacheable(ValueError):
  """A sample has no finite set of training views."""


def uncached_reason(data, num_samples: int, view_bytes: int) -> str:
  """Why a probe on this data cannot train from cached features ("" if it can);
  `view_bytes`: one view's features and targets."""
  if jax.process_count() > 1:
    return "several processes"
  if not pipeline.geometry(data, training=True).fixed:
    return f"random crops (data.crop_scale {tuple(data.crop_scale)})"
  if 2 * 2 * num_samples * view_bytes > MAX_BYTES:  # 2 views; kept twice while joined.
    return f"the features of {num_samples} samples would not fit in {MAX_BYTES >> 30} GiB"
  return ""


def _epoch_order(seed: int, epoch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(sample order, mirrored?) of one epoch."""
  rng = np.random.default_rng([int(seed), int(epoch)])
  return rng.permutation(n), rng.random(n) < 0.5


class FeatureCache:
  """Every view's encoder output, valid mask and target; batches drawn by step.

  features: (N, V, T, D); valid: (N, V, T); targets: (N, V, ...); V is 1 (no
  flip) or 2 (view 1 mirrored).
  """

  def __init__(self, features: np.ndarray, valid: np.ndarray, targets: np.ndarray,
               *, batch_size: int, seed: int):
    self.features, self.valid, self.targets = features, valid, targets
    self.batch_size, self.seed = int(batch_size), int(seed)
    self.seconds = 0.0  # What building it took (set by `encode`).
    self._epoch = (None, None, None)

  def __len__(self) -> int:
    return len(self.features)

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
      if self.features.shape[1] > 1:
        views[here] = mirrored[positions[here] % n]
    return samples, views

  def batch(self, step: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """((features, valid), targets) of training step `step`."""
    s, v = self.draw(step)
    return (self.features[s, v], self.valid[s, v]), self.targets[s, v]


@functools.lru_cache(maxsize=None)
def _features_fn(graphdef):
  """The jitted `features` of a model structure (compiled once per shape)."""
  return jax.jit(lambda state, batch: nnx.merge(graphdef, state).features(batch))


def encode(model, inputs: Callable[[dict], dict], targets: Callable[[dict], Any], data, source,
           place: Callable, *, seed: int, check: Callable[[np.ndarray], None]) -> FeatureCache:
  """The cache of `model.features` over every view of every sample of `source`.

  inputs: raw batch -> encoder batch (m4.models.transfer.EncoderInputs);
  targets: raw batch -> the task's targets; place: host arrays -> arrays on
  the mesh; check: called once with all targets.
  """
  t0 = time.time()
  crop = pipeline.geometry(data, training=True)
  graphdef, state = nnx.split(model)
  features_fn = _features_fn(graphdef)
  size = int(data.batch_size)
  outs, pending, num_views = [], [], None

  def flush():
    padded = pending + [pending[-1]] * (size - len(pending))  # Whole batches: one compile.
    raw = jax.tree.map(lambda *x: np.stack(x), *padded)
    out, ok = features_fn(state, place(inputs(raw)))
    n = len(pending)
    outs.append((np.asarray(out)[:n], np.asarray(ok)[:n], np.asarray(targets(raw))[:n]))
    pending.clear()

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
    raise ValueError(f"{source!r}: no readable sample to probe on.")
  feats, valid, targs = (np.concatenate(x) for x in zip(*outs))
  check(targs)
  per_sample = lambda x: x.reshape(-1, num_views, *x.shape[1:])
  cache = FeatureCache(per_sample(feats), per_sample(valid), per_sample(targs),
                       batch_size=size, seed=seed)
  cache.seconds = time.time() - t0
  return cache
