"""Depth metrics in metres: delta1, absolute relative error and RMSE.

Per image over its valid ground-truth pixels (depth > 0), then averaged over
the images that have any (the usual NYUv2 protocol, e.g. Eigen et al.):
  delta1   fraction of pixels with max(pred / gt, gt / pred) < 1.25 (higher is better)
  abs_rel  mean |pred - gt| / gt (lower is better)
  rmse     sqrt(mean (pred - gt)^2), metres (lower is better)
Predictions are the head's log-depth in metres, clipped to the range of
m4.value_scales (DEPTH_MIN_M .. DEPTH_MAX_M).
"""

from __future__ import annotations

import jax.numpy as jnp

from m4 import value_scales
from m4.evaluators import base


class Evaluator(base.DatasetEvaluator):
  """metrics: delta1, abs_rel, rmse, num_samples."""

  headline = ("delta1", "abs_rel", "rmse")
  higher_is_better = {"delta1": True, "abs_rel": False, "rmse": False}

  @staticmethod
  def batch_sums(preds, targets, valid, num_classes):
    del num_classes
    gt = targets.astype(jnp.float32)
    mask = value_scales.depth_valid(gt) & valid[:, None, None]
    n = jnp.sum(mask, axis=(1, 2)).astype(jnp.float32)
    has = n > 0
    safe_gt = jnp.where(mask, gt, 1.0)
    p = jnp.where(mask, preds, 1.0)
    mean = lambda x: jnp.sum(jnp.where(mask, x, 0.0), axis=(1, 2)) / jnp.maximum(n, 1.0)
    ratio = jnp.maximum(p / safe_gt, safe_gt / p)
    per_image = {"delta1": mean((ratio < 1.25).astype(jnp.float32)),
                 "abs_rel": mean(jnp.abs(p - safe_gt) / safe_gt),
                 "rmse": jnp.sqrt(mean(jnp.square(p - safe_gt)))}
    out = {k: jnp.sum(jnp.where(has, v, 0.0)) for k, v in per_image.items()}
    out["images"] = jnp.sum(has.astype(jnp.float32))
    out["count"] = jnp.sum(valid.astype(jnp.float32))
    return out

  def finalize(self, sums):
    n = max(float(sums["images"]), 1.0)
    return {k: float(sums[k]) / n for k in ("delta1", "abs_rel", "rmse")}
