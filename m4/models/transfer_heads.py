"""Small task heads on encoder features, and the loss each is trained with.

    head = ClassificationHead(dim, num_classes, hidden=0, rngs=rngs)
    logits = head(tokens, valid, train=True)    # (B, N, D), (B, N) -> (B, C)
    head = DenseHead(dim, out_channels=6, patch=8, hidden=0, rngs=rngs)
    logits = head(grid)                         # (B, h, w, D) -> (B, h*8, w*8, 6)
    head = BilinearHead(dim, out_channels=6, patch=8, rngs=rngs)   # token logits, upsampled
    head = UpsampleHead(dim, out_channels=6, patch=8, rngs=rngs)   # conv decoder

Both are standard and light: a normalisation, then one linear layer
(`hidden=0`, a linear probe's readout) or a GELU MLP with one hidden layer.
`norm="batch"` (default) standardises each feature with batch statistics
(running averages at evaluation), without scale or bias, as MAE's linear
probe: mean-pooled encoder features differ between images by about 1 % of
their size, which a per-sample LayerNorm (`norm="layer"`) keeps, so a head
behind it barely learns. Heads take `train=True` while training. The dense head
predicts the p x p pixels of each token's patch from that token alone and
lays them out in place (a learned "pixel shuffle" upsampling), as a linear
per-patch decoder. The last layer starts at zero, so every run starts from
uniform class scores / a constant depth.

Losses (means over the labelled elements, float32):
  classification  softmax cross-entropy, optional label smoothing;
  segmentation    per-pixel cross-entropy, class 255 (unlabelled) ignored;
  depth           L1 between the prediction and the normalised log-depth of
                  m4.value_scales.normalize, over valid pixels (depth > 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from m4 import value_scales

Array = jax.Array
IGNORE = value_scales.SEMSEG_IGNORE


NORMS = ("batch", "layer")


def _norm(dim: int, norm: str, rngs: nnx.Rngs) -> nnx.Module:
  """The head's input norm: "batch" (statistics only) or "layer"."""
  if norm not in NORMS:
    raise ValueError(f"head norm {norm!r} is not one of {NORMS}.")
  if norm == "batch":
    return nnx.BatchNorm(dim, momentum=0.9, epsilon=1e-6, use_bias=False, use_scale=False,
                         rngs=rngs)
  return nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)


def _apply_norm(norm: nnx.Module, x: Array, train: bool) -> Array:
  if isinstance(norm, nnx.BatchNorm):
    return norm(x, use_running_average=not train)
  return norm(x)


class _Readout(nnx.Module):
  """Norm -> [Linear -> GELU] -> Linear (zero-initialised)."""

  def __init__(self, dim: int, out: int, *, hidden: int, norm: str, rngs: nnx.Rngs):
    self.norm = _norm(dim, norm, rngs)
    self.hidden = nnx.Linear(dim, hidden, rngs=rngs) if hidden else None
    self.out = nnx.Linear(hidden or dim, out, kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, x: Array, train: bool) -> Array:
    x = x.astype(jnp.float32)
    x = _apply_norm(self.norm, x, train)
    if self.hidden is not None:
      x = jax.nn.gelu(self.hidden(x))
    return self.out(x)


POOLS = ("mean", "attention")


class ClassificationHead(nnx.Module):
  """Pooled valid encoder tokens -> readout -> (B, num_classes) logits.

  `pool="mean"`: their mean. `pool="attention"`: per head (`dim // 32` of
  them where that divides `dim`, else one), a learned query's softmax
  weights over the tokens' keys (a linear map) average that head's slice of
  the tokens, as an attentive probe. The query starts at zero, so the head
  starts as the mean (a sample without valid tokens: the mean of all).
  """

  def __init__(self, dim: int, num_classes: int, *, hidden: int = 0, norm: str = "batch",
               pool: str = "mean", rngs: nnx.Rngs):
    if pool not in POOLS:
      raise ValueError(f"head pool {pool!r} is not one of {POOLS}.")
    self.pool = pool
    if pool == "attention":
      heads = max(dim // 32, 1)
      self.num_heads = heads if dim % heads == 0 else 1
      self.key = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
      self.query = nnx.Param(jnp.zeros((self.num_heads, dim // self.num_heads)))
    self.readout = _Readout(dim, num_classes, hidden=hidden, norm=norm, rngs=rngs)

  def __call__(self, tokens: Array, valid: Array, train: bool = False) -> Array:
    x = tokens.astype(jnp.float32)
    if self.pool == "mean":
      w = valid[..., None].astype(jnp.float32)
      return self.readout(jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, 1), 1.0), train)
    b, n, d = x.shape
    h = self.num_heads
    keys = self.key(x).reshape(b, n, h, d // h)
    scores = jnp.einsum("bnhe,he->bhn", keys, self.query[...]) / jnp.sqrt(d / h)
    scores = jnp.where(valid[:, None, :], scores, -1e30)
    weights = jax.nn.softmax(scores, axis=-1)
    pooled = jnp.einsum("bhn,bnhe->bhe", weights, x.reshape(b, n, h, d // h))
    return self.readout(pooled.reshape(b, d), train)


class DenseHead(nnx.Module):
  """Token grid (B, h, w, D) -> per-patch readout -> (B, h*p, w*p, C)."""

  def __init__(self, dim: int, out_channels: int, patch: int, *, hidden: int = 0,
               norm: str = "batch", rngs: nnx.Rngs):
    self.patch = int(patch)
    self.out_channels = int(out_channels)
    self.readout = _Readout(dim, self.patch * self.patch * self.out_channels, hidden=hidden,
                            norm=norm, rngs=rngs)

  def __call__(self, grid: Array, train: bool = False) -> Array:
    b, h, w, _ = grid.shape
    p, c = self.patch, self.out_channels
    x = self.readout(grid, train).reshape(b, h, w, p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, c)


class BilinearHead(nnx.Module):
  """Token grid (B, h, w, D) -> per-token readout -> bilinear upsampling -> (B, h*p, w*p, C).

  The linear protocol of DINOv2's segmentation probe: each token gives the
  class scores (or depth) of its patch centre, and pixels in between
  interpolate them, so the readout has to know what a patch shows, not draw
  the inside of the patch from the token alone (as DenseHead does).
  """

  def __init__(self, dim: int, out_channels: int, patch: int, *, hidden: int = 0,
               norm: str = "batch", rngs: nnx.Rngs):
    self.patch = int(patch)
    self.readout = _Readout(dim, int(out_channels), hidden=hidden, norm=norm, rngs=rngs)

  def __call__(self, grid: Array, train: bool = False) -> Array:
    b, h, w, _ = grid.shape
    x = self.readout(grid, train)
    return jax.image.resize(x, (b, h * self.patch, w * self.patch, x.shape[-1]), "bilinear")


class UpsampleHead(nnx.Module):
  """Token grid (B, h, w, D) -> a light convolutional decoder -> (B, h*p, w*p, C).

  norm -> 1x1 projection to `widths[0]` -> per doubling of the resolution
  (log2 p of them): 2x bilinear upsampling, 3x3 convolution to the next
  width, GELU -> 1x1 convolution to C (zero-initialised), plus a linear
  readout of each token bilinearly upsampled (the probe's path, so the class
  of a patch does not have to pass the narrow convolutions). MultiMAE decodes
  dense tasks with a (heavier) convolutional head for the same reason: one
  token per 8x8 patch cannot place a boundary inside the patch by itself.
  """

  def __init__(self, dim: int, out_channels: int, patch: int, *,
               widths: tuple[int, ...] = (64, 32, 16), norm: str = "batch", rngs: nnx.Rngs):
    steps = int(patch).bit_length() - 1
    if patch < 2 or 1 << steps != patch:
      raise ValueError(f"UpsampleHead: the patch size {patch} must be a power of 2 (>= 2).")
    widths = tuple(int(w) for w in widths)
    widths = widths + (widths[-1],) * (steps + 1 - len(widths))
    self.norm = _norm(dim, norm, rngs)
    self.proj = nnx.Linear(dim, widths[0], rngs=rngs)
    self.convs = nnx.List([nnx.Conv(widths[i], widths[i + 1], (3, 3), rngs=rngs)
                           for i in range(steps)])
    self.out = nnx.Conv(widths[steps], out_channels, (1, 1),
                        kernel_init=nnx.initializers.zeros, rngs=rngs)
    self.readout = nnx.Linear(dim, out_channels, kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, grid: Array, train: bool = False) -> Array:
    x = grid.astype(jnp.float32)
    x = _apply_norm(self.norm, x, train)
    coarse = self.readout(x)
    x = jax.nn.gelu(self.proj(x))
    for conv in self.convs:
      b, h, w, c = x.shape
      x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear")
      x = jax.nn.gelu(conv(x))
    b, h, w, c = coarse.shape
    return self.out(x) + jax.image.resize(coarse, (b, *x.shape[1:3], c), "bilinear")


# ------------------------------------------------------------------ losses


def classification_loss(logits: Array, labels: Array, smoothing: float = 0.0) -> Array:
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def segmentation_loss(logits: Array, labels: Array) -> Array:
  """Mean cross-entropy over the labelled pixels (labels != 255)."""
  labelled = labels != IGNORE
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(labelled, labels, 0))
  return jnp.sum(jnp.where(labelled, ce, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)


def depth_loss(pred: Array, depth_m: Array) -> Array:
  """Mean |pred - normalised log-depth| over valid pixels; pred (B, H, W) (`log_depth`)."""
  valid = value_scales.depth_valid(depth_m)
  err = jnp.abs(pred.astype(jnp.float32) - value_scales.normalize("depth", depth_m))
  return jnp.sum(jnp.where(valid, err, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def log_depth(outputs: Array, bins: int = 0) -> Array:
  """Depth head outputs (B, H, W, max(bins, 1)) -> normalised log-depth (B, H, W).

  bins = 0: the single channel. bins = K: the softmax-weighted centre of K
  bins spread evenly over [DEPTH_MIN_M, DEPTH_MAX_M] in normalised log-depth.
  """
  if not bins:
    return outputs[..., 0]
  lo, hi = (float(value_scales.normalize("depth", np.float32(d)))
            for d in (value_scales.DEPTH_MIN_M, value_scales.DEPTH_MAX_M))
  centres = jnp.linspace(lo, hi, bins, dtype=jnp.float32)
  z = outputs.astype(jnp.float32)
  e = jnp.exp(z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True)))
  sums = jnp.matmul(e, jnp.stack([centres, jnp.ones_like(centres)], axis=-1),  # One pass.
                    precision=jax.lax.Precision.HIGHEST)
  return sums[..., 0] / sums[..., 1]


def depth_metres(pred: Array) -> Array:
  """Normalised log-depth (B, H, W) (`log_depth`) -> metres, always a valid depth."""
  return value_scales.denormalize("depth", jnp.maximum(pred, value_scales.DEPTH_INVALID_BELOW))
