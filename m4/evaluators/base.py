"""One evaluation pass over a split, shared by the transfer evaluators.

A subclass says what to add up per batch (`batch_sums`, jitted with the
model: a dict of arrays that sum over batches) and how to turn the totals
into metrics (`finalize`, on the host in float64). The pass reads the split
once in order through m4's grain pipeline (central crops, padded last batch
whose padding `valid` masks out), shows a tqdm bar, and keeps the first
`num_examples` samples' inputs, targets and predictions in `examples`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx
from jax.experimental import multihost_utils

from m4 import sharding
from m4.data import pipeline
from m4.data import sources
from m4 import value_scales
from m4.models import transfer


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _step(graphdef, sums_fn, num_classes, state, enc, targets, valid):
  model = nnx.merge(graphdef, state)
  outputs = model(enc, frozen=True)
  preds = transfer.predictions(model.task, outputs)
  return preds, sums_fn(preds, targets, valid, num_classes)


class DatasetEvaluator:
  """Evaluates a TransferModel on one split (see module doc).

  Args:
    task: the TaskSpec.
    data: the `config.data` ConfigDict (the pipeline's fields).
    split: the split to evaluate, e.g. "test".
    seed: the config's seed (evaluation reads in order; it only names streams).
    inputs: m4.models.transfer.EncoderInputs for the task.
    mesh, rules: where batches go (None: the default device).
    num_examples: samples kept for pictures.
    num_samples: evaluate only the first this many samples (0: all).
    source: a source to read instead of `make_source(data, split)`.
  """

  def __init__(self, *, task: transfer.TaskSpec, data, split: str, seed: int,
               inputs: transfer.EncoderInputs, mesh=None, rules=sharding.DEFAULT_RULES,
               num_examples: int = 8, num_samples: int = 0, source=None):
    self.task, self.data, self.split, self.seed = task, data, split, int(seed)
    self.inputs, self.mesh, self.rules = inputs, mesh, rules
    self.num_examples = int(num_examples)
    self.source = source if source is not None else sources.make_source(data, split)
    if num_samples:
      self.source = _Head(self.source, int(num_samples))
    self.examples: dict[str, np.ndarray] = {}

  # -- what subclasses define

  @staticmethod
  def batch_sums(preds, targets, valid, num_classes) -> dict[str, jax.Array]:
    raise NotImplementedError

  def finalize(self, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
    raise NotImplementedError

  # -- the pass

  def _place(self, tree):
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, tree)
    return sharding.to_global(tree, self.mesh, self.rules)

  def run(self, model: transfer.TransferModel) -> dict[str, float]:
    graphdef, state = nnx.split(model)
    ds = pipeline.make_dataset(self.data, self.split, seed=self.seed, training=False,
                               source=self.source)
    total = pipeline.num_eval_batches(self.data, len(self.source))
    sums, kept = None, []
    use = (sharding.use(self.mesh, self.rules) if self.mesh is not None
           else contextlib.nullcontext())
    with use:
      for batch in tqdm.tqdm(ds, total=total, desc=f"eval {self.task.name}", leave=False,
                             mininterval=2.0):
        valid = np.asarray(batch["valid"])
        targets = np.asarray(self.task.targets(batch))
        enc = self._place(self.inputs(batch))
        preds, s = _step(graphdef, type(self).batch_sums, self.task.num_classes, state, enc,
                         self._place(targets), self._place(valid))
        s = jax.tree.map(lambda x: np.asarray(x.addressable_data(0), np.float64), s)
        sums = s if sums is None else jax.tree.map(np.add, sums, s)
        if sum(len(k["target"]) for k in kept) < self.num_examples:
          kept.append(self._keep(batch, targets, self._local(preds), valid))
    self.examples = {k: np.concatenate([e[k] for e in kept])[:self.num_examples]
                     for k in kept[0]} if kept else {}
    metrics = self.finalize(sums)
    metrics["num_samples"] = float(sums["count"]) if "count" in sums else float(len(self.source))
    return metrics

  def _local(self, x) -> np.ndarray:
    """This process's rows of a batch-sharded result."""
    if self.mesh is None or jax.process_count() == 1:
      return np.asarray(x)
    spec = sharding.batch_spec(self.rules, x.ndim)
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, self.mesh, spec))

  def _keep(self, batch, targets, preds, valid) -> dict[str, np.ndarray]:
    keep = {"target": targets[valid], "prediction": preds[valid],
            "id": np.asarray(batch["id"])[valid]}
    for key in self.task.raw_keys():
      if key in value_scales.IMAGE_KEYS and key != self.task.target:
        keep[f"input_{key}"] = np.asarray(batch[key])[valid]
    return keep


class _Head:
  """The first n samples of a source."""

  def __init__(self, source, n: int):
    self.source, self.n = source, min(int(n), len(source))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return self.source[i]

  def __repr__(self):
    return f"first {self.n} of {self.source!r}"
