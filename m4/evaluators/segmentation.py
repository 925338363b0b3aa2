"""Mean IoU and pixel accuracy of a segmentation head.

A confusion matrix over the labelled pixels (class 255 is ignored) is summed
over the split; IoU_c = TP / (TP + FP + FN) and mIoU is the mean over the
classes that occur in the labels or the predictions (union > 0), as
mmsegmentation computes it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from m4 import value_scales
from m4.evaluators import base


class Evaluator(base.DatasetEvaluator):
  """metrics: miou, pixel_accuracy, iou/<class id>, num_samples."""

  headline = ("miou",)
  higher_is_better = {"miou": True, "pixel_accuracy": True}

  @staticmethod
  def batch_sums(preds, targets, valid, num_classes):
    labelled = (targets != value_scales.SEMSEG_IGNORE) & valid[:, None, None]
    labelled &= (targets >= 0) & (targets < num_classes)
    index = jnp.where(labelled, targets * num_classes + preds, 0).reshape(-1)
    conf = jnp.zeros((num_classes * num_classes,), jnp.int32).at[index].add(
        labelled.reshape(-1).astype(jnp.int32))
    return {"confusion": conf.reshape(num_classes, num_classes),
            "count": jnp.sum(valid.astype(jnp.float32))}

  def finalize(self, sums):
    conf = np.asarray(sums["confusion"], np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    out = {"miou": float(np.nanmean(iou)) if present.any() else 0.0,
           "pixel_accuracy": float(tp.sum() / max(conf.sum(), 1))}
    # Per class too: an mIoU can look fair while only the large classes are drawn.
    out.update({f"iou/{c}": float(v) for c, v in enumerate(iou) if not np.isnan(v)})
    self.per_class_iou = iou
    return out
