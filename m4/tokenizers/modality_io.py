"""Per-modality handling around the VQ-VAE: inputs, losses, outputs, checks.

    io = modality_io.make("depth", num_classes=None)
    io.check(depth_metres)                 # host-side: clear errors on bad input
    x = io.prepare(depth_metres)           # (B, H, W, io.in_channels), jax
    loss, metrics = io.loss(model_output, depth_metres)
    depth = io.postprocess(model_output)   # back to raw units

Raw units follow m4's data contract; value scales come from
`m4.value_scales.normalize/denormalize`:

  rgb     (B, H, W, 3) uint8, or float in [0, 1]. Input and output in
          [-1, 1]; loss: mean squared + mean absolute error (weights
          `mse`, `l1`). Decoded: float32 in [0, 1].
  depth   (B, H, W) float metres; 0 marks an invalid pixel (the documented
          mask: sky, holes). NaN, inf or negative values are an error.
          Input: [normalised log-depth (0 where invalid), validity]; output:
          [normalised log-depth, validity logit]. Loss: a robust
          (Charbonnier) error on log-depth over valid pixels only, plus a
          binary cross-entropy on validity (weights `depth`, `valid`).
          Decoded: metres, 0 where the validity logit is negative.
  semseg  (B, H, W) integer class ids in [0, num_classes) or 255
          (unlabelled: a zero one-hot input, ignored by the loss). Input:
          one-hot over classes; output: logits; loss: cross-entropy (weight
          `ce`). Decoded: int32 argmax ids (and the logits on request).
  normals (B, H, W, 3) float unit vectors (camera space, m4.data.scene_extras),
          0 where there is no surface (sky). Input: the vectors; output:
          [vector, validity logit]; loss: 1 - cosine to the true normal over
          valid pixels (weight `angle`) plus a binary cross-entropy on
          validity (weight `valid`). Decoded: unit vectors, 0 where the
          validity logit is negative. Figure: mean angular error (degrees).
  edges   (B, H, W) {0, 1} maps (data keys "edges" and "rgb_edges"). Input:
          the map in [-1, 1]; output: one logit; loss: binary cross-entropy
          with the edge pixels weighted by `pos_weight` (weight `bce`).
          Decoded: uint8 {0, 1}. Figures: pixel precision, recall and F1.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from m4 import modalities
from m4 import value_scales

SEMSEG_IGNORE = value_scales.SEMSEG_IGNORE
RGB_TOLERANCE = 1e-3  # Float rgb may exceed [0, 1] by this much (rounding).


def _describe_bad(mask: np.ndarray, values: np.ndarray, limit: int = 5) -> str:
  """'3 pixels, e.g. 7 at (0, 4, 5), ...' for an error message."""
  where = np.argwhere(mask)
  examples = ", ".join(f"{values[tuple(w)].item()!r} at {tuple(int(i) for i in w)}"
                       for w in where[:limit])
  return f"{len(where)} pixel(s), e.g. {examples}"


class ModalityIO:
  """Base class: see the module docstring for what each modality does."""

  key: str = ""  # The raw-sample key: "rgb", "depth", "semseg", "normals" or "edges".
  channels: int = 0  # Trailing channels of a raw sample (0: an (H, W) map).
  in_channels: int = 0
  out_channels: int = 0
  headline: tuple[str, ...] = ()  # Training metrics the progress line shows first.

  def __init__(self, name: str, loss_weights: Mapping[str, float] | None = None):
    self.name = name
    self.loss_weights = {**self.default_weights(), **dict(loss_weights or {})}
    unknown = set(self.loss_weights) - set(self.default_weights())
    if unknown:
      raise ValueError(f"{name}: unknown loss weights {sorted(unknown)};"
                       f" known: {sorted(self.default_weights())}")

  @staticmethod
  def default_weights() -> dict[str, float]:
    return {}

  def check_shape(self, x: np.ndarray, image_size: tuple[int, int] | None):
    want = f"(B, H, W, {self.channels})" if self.channels else "(B, H, W)"
    if x.ndim != (4 if self.channels else 3):
      raise ValueError(f"{self.name}: expected a batch of shape {want}, got shape {x.shape}.")
    if self.channels and x.shape[-1] != self.channels:
      raise ValueError(f"{self.name}: expected {self.channels} channels in the last axis,"
                       f" got {x.shape[-1]} (shape {x.shape}).")
    if image_size is not None and tuple(x.shape[1:3]) != tuple(image_size):
      raise ValueError(f"{self.name}: images must be {tuple(image_size)} pixels (the tokenizer's"
                       f" image_size), got {tuple(x.shape[1:3])}.")

  def check(self, x, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Raises ValueError naming the modality and the problem; returns x."""
    raise NotImplementedError

  def prepare(self, x) -> jax.Array:
    raise NotImplementedError

  def loss(self, output: jax.Array, x) -> tuple[jax.Array, dict[str, jax.Array]]:
    raise NotImplementedError

  def postprocess(self, output: jax.Array) -> jax.Array:
    raise NotImplementedError

  def metric_sums(self, output: jax.Array, x, valid: jax.Array) -> dict[str, jax.Array]:
    """Additive sums over the images where `valid` (B,) is 1 (0: padding).

    `metrics_from_sums` turns the totals into figures.
    """
    raise NotImplementedError

  def metrics_from_sums(self, sums: Mapping[str, Any]) -> dict[str, float]:
    raise NotImplementedError


class RgbIO(ModalityIO):
  key, channels, in_channels, out_channels = "rgb", 3, 3, 3
  headline = ("psnr",)

  @staticmethod
  def default_weights():
    return {"mse": 1.0, "l1": 0.0}

  def check(self, x, image_size=None):
    x = np.asarray(x)
    self.check_shape(x, image_size)
    if x.dtype == np.uint8:
      return x
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"{self.name}: expected uint8 or float in [0, 1], got dtype {x.dtype}.")
    bad = ~np.isfinite(x) | (x < -RGB_TOLERANCE) | (x > 1 + RGB_TOLERANCE)
    if bad.any():
      raise ValueError(f"{self.name}: float values must be finite and in [0, 1] (uint8 for"
                       f" 0..255); found {_describe_bad(bad, x)}.")
    return x

  @staticmethod
  def _unit(x):
    x = jnp.asarray(x)
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)

  def prepare(self, x):
    return value_scales.normalize("rgb", self._unit(x))

  def loss(self, output, x):
    err = output - self.prepare(x)
    mse, l1 = jnp.mean(jnp.square(err)), jnp.mean(jnp.abs(err))
    w = self.loss_weights
    # PSNR of [0, 1] images: the error above is on [-1, 1], twice as large.
    psnr = 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))
    return w["mse"] * mse + w["l1"] * l1, {"mse": mse, "l1": l1, "psnr": psnr}

  def postprocess(self, output):
    return value_scales.denormalize("rgb", output)

  def metric_sums(self, output, x, valid):
    se = jnp.mean(jnp.square(self.postprocess(output) - self._unit(x)), axis=(1, 2, 3))
    return {"images": jnp.sum(valid), "mse": jnp.sum(se * valid),
            "psnr": jnp.sum(10.0 * jnp.log10(1.0 / jnp.maximum(se, 1e-10)) * valid)}

  def metrics_from_sums(self, sums):
    n = max(float(sums["images"]), 1.0)
    return {"psnr": float(sums["psnr"]) / n,
            "psnr_of_mean_mse": 10.0 * math.log10(1.0 / max(float(sums["mse"]) / n, 1e-10)),
            "mse": float(sums["mse"]) / n}


class DepthIO(ModalityIO):
  key, in_channels, out_channels = "depth", 2, 2
  headline = ("delta1_log",)

  @staticmethod
  def default_weights():
    return {"depth": 1.0, "valid": 0.1}

  def check(self, x, image_size=None):
    x = np.asarray(x)
    self.check_shape(x, image_size)
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"{self.name}: expected float depth in metres, got dtype {x.dtype}.")
    bad = ~np.isfinite(x) | (x < 0)
    if bad.any():
      raise ValueError(f"{self.name}: depth must be finite and >= 0 metres (0 marks an invalid"
                       f" pixel); found {_describe_bad(bad, x)}.")
    return x

  @staticmethod
  def _target(x):
    x = jnp.asarray(x, jnp.float32)
    valid = value_scales.depth_valid(x)
    return jnp.where(valid, value_scales.normalize("depth", x), 0.0), valid

  def prepare(self, x):
    z, valid = self._target(x)
    return jnp.stack([z, valid.astype(jnp.float32)], axis=-1)

  def loss(self, output, x):
    z, valid = self._target(x)
    v = valid.astype(jnp.float32)
    err = output[..., 0] - z
    robust = jnp.sqrt(jnp.square(err) + 1e-4) - 1e-2  # Charbonnier: ~L1, smooth at 0.
    depth_loss = jnp.sum(robust * v) / jnp.maximum(jnp.sum(v), 1.0)
    bce = jnp.mean(jax.nn.softplus(output[..., 1]) - v * output[..., 1])
    w = self.loss_weights
    delta1 = jnp.sum((jnp.abs(err) < math.log(1.25) / value_scales.LOG_DEPTH_STD) * v) / jnp.maximum(
        jnp.sum(v), 1.0)
    return w["depth"] * depth_loss + w["valid"] * bce, {
        "depth_l1": depth_loss, "valid_bce": bce, "delta1_log": delta1}

  def postprocess(self, output):
    depth = value_scales.denormalize("depth", output[..., 0])
    return jnp.where(output[..., 1] > 0, depth, 0.0)

  def metric_sums(self, output, x, valid):
    """abs-rel and delta1 over pixels valid in `x`, against depth clipped to
    the range the tokenizer represents ([DEPTH_MIN_M, DEPTH_MAX_M])."""
    gt = jnp.asarray(x, jnp.float32)
    image = jnp.broadcast_to(jnp.asarray(valid, jnp.float32)[:, None, None], gt.shape)
    valid = value_scales.depth_valid(gt) & (image > 0)
    gt_clipped = jnp.clip(jnp.where(valid, gt, 1.0), value_scales.DEPTH_MIN_M, value_scales.DEPTH_MAX_M)
    pred = self.postprocess(output)
    v = valid.astype(jnp.float32)
    ratio = jnp.maximum(pred / gt_clipped, gt_clipped / jnp.maximum(pred, 1e-6))
    pred_valid = pred > 0
    return {"valid_pixels": jnp.sum(v),
            "abs_rel": jnp.sum(jnp.abs(pred - gt_clipped) / gt_clipped * v),
            "delta1": jnp.sum((ratio < 1.25) * v),
            "validity_correct": jnp.sum((pred_valid == value_scales.depth_valid(gt)) * image),
            "pixels": jnp.sum(image)}

  def metrics_from_sums(self, sums):
    n = max(float(sums["valid_pixels"]), 1.0)
    return {"abs_rel": float(sums["abs_rel"]) / n, "delta1": float(sums["delta1"]) / n,
            "validity_accuracy": float(sums["validity_correct"]) / max(float(sums["pixels"]), 1.0)}


class SemsegIO(ModalityIO):
  key = "semseg"
  headline = ("pixel_accuracy",)

  def __init__(self, name, loss_weights=None, *, num_classes: int):
    super().__init__(name, loss_weights)
    if not 2 <= num_classes < SEMSEG_IGNORE:
      raise ValueError(f"{name}: num_classes must be in [2, {SEMSEG_IGNORE}), got {num_classes}.")
    self.num_classes = num_classes
    self.in_channels = self.out_channels = num_classes

  @staticmethod
  def default_weights():
    return {"ce": 1.0}

  def check(self, x, image_size=None):
    x = np.asarray(x)
    self.check_shape(x, image_size)
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
      raise ValueError(f"{self.name}: expected integer class ids, got dtype {x.dtype}.")
    bad = ((x < 0) | (x >= self.num_classes)) & (x != SEMSEG_IGNORE)
    if bad.any():
      raise ValueError(f"{self.name}: class ids must be in [0, {self.num_classes}) or"
                       f" {SEMSEG_IGNORE} (unlabelled); found {_describe_bad(bad, x)}.")
    return x

  def prepare(self, x):
    # jax.nn.one_hot gives a zero vector for 255 (unlabelled).
    return jax.nn.one_hot(jnp.asarray(x, jnp.int32), self.num_classes, dtype=jnp.float32)

  def loss(self, output, x):
    labels = jnp.asarray(x, jnp.int32)
    labelled = (labels != SEMSEG_IGNORE).astype(jnp.float32)
    logp = jax.nn.log_softmax(output.astype(jnp.float32), axis=-1)
    safe = jnp.where(labels == SEMSEG_IGNORE, 0, labels)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    n = jnp.maximum(jnp.sum(labelled), 1.0)
    ce = jnp.sum(nll * labelled) / n
    accuracy = jnp.sum((jnp.argmax(output, -1) == labels) * labelled) / n
    return self.loss_weights["ce"] * ce, {"ce": ce, "pixel_accuracy": accuracy}

  def postprocess(self, output):
    return jnp.argmax(output, axis=-1).astype(jnp.int32)

  def metric_sums(self, output, x, valid):
    image = jnp.broadcast_to(jnp.asarray(valid)[:, None, None] > 0, jnp.shape(x)).reshape(-1)
    labels = jnp.asarray(x, jnp.int32).reshape(-1)
    pred = self.postprocess(output).reshape(-1)
    labelled = (labels != SEMSEG_IGNORE) & image
    k = self.num_classes
    gt_1h = jax.nn.one_hot(jnp.where(labelled, labels, k), k, dtype=jnp.float32)  # 255 -> 0s
    pr_1h = jax.nn.one_hot(pred, k, dtype=jnp.float32) * labelled[:, None]
    inter = jnp.sum(gt_1h * pr_1h, 0)
    return {"intersection": inter, "union": jnp.sum(gt_1h, 0) + jnp.sum(pr_1h, 0) - inter,
            "correct": jnp.sum(inter), "labelled": jnp.sum(labelled.astype(jnp.float32))}

  def metrics_from_sums(self, sums):
    inter, union = np.asarray(sums["intersection"]), np.asarray(sums["union"])
    present = union > 0
    iou = np.where(present, inter / np.maximum(union, 1), np.nan)
    return {"miou": float(np.nanmean(iou)) if present.any() else 0.0,
            "pixel_accuracy": float(sums["correct"]) / max(float(sums["labelled"]), 1.0),
            "iou_per_class": [None if np.isnan(v) else float(v) for v in iou]}


class NormalsIO(ModalityIO):
  key, channels, in_channels, out_channels = "normals", 3, 3, 4
  headline = ("angle_deg",)
  TOLERANCE = 1e-3  # Vectors may exceed unit length by this much (rounding).

  @staticmethod
  def default_weights():
    return {"angle": 1.0, "valid": 0.1}

  def check(self, x, image_size=None):
    x = np.asarray(x)
    self.check_shape(x, image_size)
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"{self.name}: expected float unit vectors, got dtype {x.dtype}.")
    norm = np.linalg.norm(np.nan_to_num(x, nan=np.inf), axis=-1)
    bad = ~np.isfinite(norm) | ((norm > 0) & (np.abs(norm - 1) > self.TOLERANCE))
    if bad.any():
      raise ValueError(f"{self.name}: normals must be unit vectors (0 where there is no"
                       f" surface); found {_describe_bad(bad, norm)} (their lengths).")
    return x

  @staticmethod
  def _valid(x):
    return jnp.any(jnp.asarray(x) != 0, axis=-1)

  def prepare(self, x):
    return jnp.asarray(x, jnp.float32)

  @staticmethod
  def _cosine(output, x):
    pred = output[..., :3]
    return jnp.sum(pred * x, -1) / jnp.maximum(jnp.linalg.norm(pred, axis=-1), 1e-6)

  def loss(self, output, x):
    x = jnp.asarray(x, jnp.float32)
    v = self._valid(x).astype(jnp.float32)
    n = jnp.maximum(jnp.sum(v), 1.0)
    cos = self._cosine(output, x)
    angle_loss = jnp.sum((1.0 - cos) * v) / n
    bce = jnp.mean(jax.nn.softplus(output[..., 3]) - v * output[..., 3])
    degrees = jnp.sum(jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0))) * v) / n
    w = self.loss_weights
    return w["angle"] * angle_loss + w["valid"] * bce, {
        "angle_loss": angle_loss, "valid_bce": bce, "angle_deg": degrees}

  def postprocess(self, output):
    pred = output[..., :3] / jnp.maximum(jnp.linalg.norm(output[..., :3], axis=-1,
                                                         keepdims=True), 1e-6)
    return jnp.where(output[..., 3:] > 0, pred, 0.0)

  def metric_sums(self, output, x, valid):
    """Angles over pixels with a true surface; validity over all pixels."""
    x = jnp.asarray(x, jnp.float32)
    image = jnp.broadcast_to(jnp.asarray(valid, jnp.float32)[:, None, None], x.shape[:3])
    surface = self._valid(x).astype(jnp.float32) * image
    pred = self.postprocess(output)
    cos = jnp.clip(jnp.sum(pred * x, -1), -1.0, 1.0)  # A missed surface counts as 90 degrees.
    angle = jnp.degrees(jnp.arccos(cos))
    return {"surface_pixels": jnp.sum(surface), "angle_deg": jnp.sum(angle * surface),
            "within_11_25": jnp.sum((angle < 11.25) * surface),
            "validity_correct": jnp.sum((self._valid(pred) == self._valid(x)) * image),
            "pixels": jnp.sum(image)}

  def metrics_from_sums(self, sums):
    n = max(float(sums["surface_pixels"]), 1.0)
    return {"angle_deg": float(sums["angle_deg"]) / n,
            "within_11_25": float(sums["within_11_25"]) / n,
            "validity_accuracy": float(sums["validity_correct"]) / max(float(sums["pixels"]), 1.0)}


class EdgesIO(ModalityIO):
  key, in_channels, out_channels = "edges", 1, 1
  headline = ("f1",)

  @staticmethod
  def default_weights():
    return {"bce": 1.0, "pos_weight": 1.0}

  def check(self, x, image_size=None):
    x = np.asarray(x)
    self.check_shape(x, image_size)
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
      raise ValueError(f"{self.name}: expected an integer {{0, 1}} edge map, got dtype {x.dtype}.")
    bad = (x != 0) & (x != 1)
    if bad.any():
      raise ValueError(f"{self.name}: edge maps hold 0 or 1; found {_describe_bad(bad, x)}.")
    return x

  def prepare(self, x):
    return jnp.asarray(x, jnp.float32)[..., None] * 2.0 - 1.0

  def loss(self, output, x):
    y = jnp.asarray(x, jnp.float32)
    logit = output[..., 0].astype(jnp.float32)
    w = self.loss_weights
    weights = 1.0 + (w["pos_weight"] - 1.0) * y
    bce = jnp.mean(weights * (jax.nn.softplus(logit) - y * logit))
    pred, true = logit > 0, y > 0
    tp, wrong = jnp.sum(pred & true), jnp.sum(pred != true)
    return w["bce"] * bce, {"bce": bce, "f1": 2 * tp / jnp.maximum(2 * tp + wrong, 1.0)}

  def postprocess(self, output):
    return (output[..., 0] > 0).astype(jnp.uint8)

  def metric_sums(self, output, x, valid):
    image = jnp.broadcast_to(jnp.asarray(valid, jnp.float32)[:, None, None], jnp.shape(x)) > 0
    pred, true = (output[..., 0] > 0) & image, (jnp.asarray(x) > 0) & image
    return {"true_positive": jnp.sum(pred & true), "false_positive": jnp.sum(pred & ~true),
            "false_negative": jnp.sum(~pred & true)}

  def metrics_from_sums(self, sums):
    tp, fp, fn = (float(sums[k]) for k in ("true_positive", "false_positive", "false_negative"))
    return {"precision": tp / max(tp + fp, 1.0), "recall": tp / max(tp + fn, 1.0),
            "f1": 2 * tp / max(2 * tp + fp + fn, 1.0)}


_IOS = {"rgb": RgbIO, "depth": DepthIO, "semseg": SemsegIO, "normals": NormalsIO,
        "edges": EdgesIO, "rgb_edges": EdgesIO}
KEYS = tuple(_IOS)  # The raw-sample keys a VQ tokenizer can take.


def make(name: str, *, loss_weights: Mapping[str, float] | None = None,
         num_classes: int | None = None) -> ModalityIO:
  """The IO of registered modality `name` (by its raw-sample data key)."""
  key = modalities.get(name).data_key
  if key not in _IOS:
    raise ValueError(f"modality {name!r} (data key {key!r}) has no VQ tokenizer IO;"
                     f" supported data keys: {sorted(_IOS)}.")
  if key == "semseg":
    if num_classes is None:
      raise ValueError(f"{name}: semseg tokenizers need num_classes (config.model.num_classes).")
    return SemsegIO(name, loss_weights, num_classes=int(num_classes))
  return _IOS[key](name, loss_weights)
