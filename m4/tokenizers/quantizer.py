"""A vector quantizer that stays healthy: cosine codes, EMA updates, restarts.

    vq = VectorQuantizer(num_codes=1024, dim=32, rngs=nnx.Rngs(0))
    out = vq(z)                      # z: (..., dim) encoder outputs
    out.quantized                    # straight-through: forward = codes,
                                     # backward = identity to z
    out.indices, out.commitment      # int32 (...), scalar loss
    vq.ema_update(out.normalized, out.indices, key)   # training only

Codes and encoder outputs are l2-normalised, so the nearest code is the one
of largest cosine similarity (ViT-VQGAN's recipe; the low `dim` is the
factorised lookup). The codebook is not trained by gradients: each code is the
normalised exponential moving average of the encoder outputs assigned to it.
A code whose moving-average assignment count falls below `dead_threshold`
(assignments per step) is re-seeded from the current batch's encoder outputs.
The moving averages start at 0, so the first update puts every code on data:
the mean direction of the outputs assigned to it, or a restart.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class CodebookState(nnx.Variable):
  """Codebook variables updated by EMA, not by the optimizer."""


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis, keepdims=True), eps * eps))


class QuantizerOutput(NamedTuple):
  quantized: jax.Array  # (..., dim) codes, straight-through to `normalized`.
  indices: jax.Array  # int32 (...): chosen codes.
  normalized: jax.Array  # (..., dim) the l2-normalised encoder outputs.
  commitment: jax.Array  # scalar: mean squared distance to the (frozen) code.


def code_statistics(counts: jax.Array) -> dict[str, jax.Array]:
  """Usage (fraction of codes used) and perplexity from assignment counts."""
  counts = counts.astype(jnp.float32)
  p = counts / jnp.maximum(counts.sum(), 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return {"codebook_usage": jnp.mean(counts > 0), "perplexity": jnp.exp(entropy)}


def assignment_counts(indices: jax.Array, num_codes: int) -> jax.Array:
  return jnp.zeros((num_codes,), jnp.int32).at[indices.reshape(-1)].add(1)


class VectorQuantizer(nnx.Module):
  """Nearest-code lookup by cosine similarity with an EMA-updated codebook.

  Attributes:
    codebook: (num_codes, dim) unit vectors.
    ema_count: (num_codes,) moving average of assignments per step.
    ema_sum: (num_codes, dim) moving average of the assigned encoder outputs.
  """

  def __init__(self, num_codes: int, dim: int, *, decay: float = 0.99,
               dead_threshold: float = 0.03, restart_noise: float = 0.01,
               rngs: nnx.Rngs):
    if num_codes < 2 or dim < 1:
      raise ValueError(f"VectorQuantizer: need num_codes >= 2 and dim >= 1, got {num_codes}, {dim}")
    if not 0.0 <= decay < 1.0:
      raise ValueError(f"VectorQuantizer: decay must be in [0, 1), got {decay}")
    self.num_codes = num_codes
    self.dim = dim
    self.decay = decay
    self.dead_threshold = dead_threshold
    self.restart_noise = restart_noise
    codes = l2_normalize(jax.random.normal(rngs.params(), (num_codes, dim)))
    self.codebook = CodebookState(codes)
    self.ema_sum = CodebookState(jnp.zeros((num_codes, dim), jnp.float32))
    self.ema_count = CodebookState(jnp.zeros((num_codes,), jnp.float32))

  def lookup(self, indices: jax.Array) -> jax.Array:
    return jnp.take(self.codebook.get_value(), indices, axis=0)

  def nearest(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(normalised z, int32 indices of the most similar codes)."""
    z = l2_normalize(z.astype(jnp.float32))
    similarity = jnp.einsum("...d,kd->...k", z, self.codebook.get_value())
    return z, jnp.argmax(similarity, axis=-1).astype(jnp.int32)

  def __call__(self, z: jax.Array) -> QuantizerOutput:
    z, indices = self.nearest(z)
    codes = jax.lax.stop_gradient(self.lookup(indices))
    commitment = jnp.mean(jnp.sum(jnp.square(z - codes), axis=-1))
    quantized = z + jax.lax.stop_gradient(codes - z)
    return QuantizerOutput(quantized, indices, z, commitment)

  def ema_update(self, normalized: jax.Array, indices: jax.Array, key: jax.Array) -> jax.Array:
    """One EMA step towards the assigned outputs, then dead-code restarts.

    Args:
      normalized: (..., dim) l2-normalised encoder outputs (QuantizerOutput's).
      indices: (...) their assigned codes.
      key: randomness for choosing which outputs re-seed dead codes.

    Returns:
      The number of codes restarted (int32 scalar).
    """
    z = jax.lax.stop_gradient(normalized).reshape(-1, self.dim)
    idx = indices.reshape(-1)
    count = jax.ops.segment_sum(jnp.ones_like(idx, z.dtype), idx, self.num_codes)
    total = jax.ops.segment_sum(z, idx, self.num_codes)  # (K, dim) assigned sums.
    d = self.decay
    ema_count = d * self.ema_count.get_value() + (1 - d) * count
    ema_sum = d * self.ema_sum.get_value() + (1 - d) * total

    # Re-seed codes that (almost) nobody uses from current outputs, picked with
    # probability proportional to their distance from their code (k-means++
    # style: badly represented outputs get codes first). A restarted code gets
    # the threshold count: unless it attracts assignments in the next step it
    # is restarted again.
    dead = ema_count < self.dead_threshold
    pick_key, noise_key = jax.random.split(key)
    distance = jnp.sum(jnp.square(z - jnp.take(self.codebook.get_value(), idx, axis=0)), -1)
    pick = jax.random.categorical(pick_key, jnp.log(distance + 1e-6), shape=(self.num_codes,))
    noise = self.restart_noise * jax.random.normal(noise_key, (self.num_codes, self.dim))
    seeds = l2_normalize(z[pick] + noise)
    ema_count = jnp.where(dead, self.dead_threshold, ema_count)
    ema_sum = jnp.where(dead[:, None], seeds * self.dead_threshold, ema_sum)

    self.ema_count.set_value(ema_count)
    self.ema_sum.set_value(ema_sum)
    # A code that has never been assigned (nor restarted) keeps its initial value.
    codes = jnp.where((ema_count > 0)[:, None], l2_normalize(ema_sum), self.codebook.get_value())
    self.codebook.set_value(codes)
    return dead.sum().astype(jnp.int32)
