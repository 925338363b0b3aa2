"""Top-1 accuracy of a classification head, beside the majority-class rate.

`chance` is the accuracy of always answering the most frequent class of the
evaluated split: the floor a trained head must clear.
"""

from __future__ import annotations

import jax.numpy as jnp

from m4.evaluators import base


class Evaluator(base.DatasetEvaluator):
  """metrics: top1, chance, num_samples."""

  headline = ("top1",)
  higher_is_better = {"top1": True, "chance": True}

  @staticmethod
  def batch_sums(preds, targets, valid, num_classes):
    valid = valid.astype(jnp.float32)
    hist = jnp.zeros((num_classes,), jnp.float32).at[jnp.clip(targets, 0, num_classes - 1)].add(
        valid)
    return {"correct": jnp.sum((preds == targets) * valid), "count": jnp.sum(valid),
            "class_counts": hist}

  def finalize(self, sums):
    count = max(float(sums["count"]), 1.0)
    return {"top1": float(sums["correct"]) / count,
            "chance": float(sums["class_counts"].max()) / count}
