"""Drawing tokens from logits: temperature, top-k, top-p, guidance. Pure JAX.

    u = jax.random.uniform(key, logits.shape[:-1])          # One number per token drawn.
    tokens, probs = sampling.sample(logits, u, temperature=0.7, top_k=50, top_p=0.9)
    logits = sampling.guide(cond_logits, uncond_logits, scale=3.0)

The temperature divides the logits first; top-k and top-p then restrict the
tempered distribution (top-p: the smallest set of most likely tokens whose
probability reaches p; the most likely token is always kept; ties at the
threshold are kept together). `probs` is the probability of the drawn token
under that restricted distribution (MaskGIT's confidence). Temperatures below
`GREEDY_BELOW` take the argmax; its confidence is its softmax probability.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from m4.generation.schedules import GREEDY_BELOW

Array = jax.Array


def filter_logits(logits: Array, top_k: int = 0, top_p: float = 0.0) -> Array:
  """(..., V) logits with everything outside top-k / top-p set to -inf.

  `top_k` and `top_p` are Python numbers (static); 0 (and 1 for top_p)
  leave the logits as they are.
  """
  x = logits.astype(jnp.float32)
  v = x.shape[-1]
  if 0 < top_k < v:
    kth = jax.lax.top_k(x, top_k)[0][..., -1:]
    x = jnp.where(x < kth, -jnp.inf, x)
  if 0.0 < top_p < 1.0:
    ordered = -jnp.sort(-x, axis=-1)  # Descending.
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # Mass of the strictly more likely tokens.
    kept = before < top_p
    threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    x = jnp.where(x < threshold, -jnp.inf, x)
  return x


def sample(logits: Array, uniform: Array, temperature: Array | float = 1.0, top_k: int = 0,
           top_p: float = 0.0) -> tuple[Array, Array]:
  """Draws one token per row of (..., V) logits at `uniform` (...), numbers in [0, 1).

  The caller draws the uniforms, so a token's draw can follow its position
  rather than its row (the sampler gives each grid position its own number).
  A Python or NumPy scalar `temperature` picks greedy or sampled decoding while
  tracing; a traced one computes both and selects. Returns (int32 tokens
  (...), float32 probability of each drawn token under the tempered,
  filtered distribution).
  """
  if jnp.shape(uniform) != logits.shape[:-1]:
    raise ValueError(f"sample: uniform has shape {jnp.shape(uniform)}; expected one number per"
                     f" row of the logits, {logits.shape[:-1]}.")
  logits = logits.astype(jnp.float32)
  blocked = _blocked(logits)
  best, top, mass = _argmax_and_mass(blocked)
  greedy_prob = 1.0 / mass  # The argmax's softmax probability: exp(0) / mass.
  static = isinstance(temperature, (int, float, np.number)) or (
      isinstance(temperature, np.ndarray) and temperature.ndim == 0)
  if static and np.float32(temperature) < np.float32(GREEDY_BELOW):  # As traced: float32.
    return best, greedy_prob
  t = jnp.maximum(jnp.asarray(temperature, jnp.float32), GREEDY_BELOW)
  if 0 < top_k < logits.shape[-1] or 0.0 < top_p < 1.0:
    filtered = _blocked(filter_logits(logits / t, top_k, top_p))
    tokens, probs = _draw(filtered, 1.0, uniform, best, top / t)  # Filters keep the maximum.
  else:  # The temperature goes into the exponent: no tempered copy of the logits.
    tokens, probs = _draw(blocked, 1.0 / t, uniform, best, top)
  if not static:
    greedy = jnp.asarray(temperature) < GREEDY_BELOW
    tokens, probs = jnp.where(greedy, best, tokens), jnp.where(greedy, greedy_prob, probs)
  return tokens, probs


# Sampling reads the logits as (..., V / block, block): every pass over the
# whole vocabulary is a reduction, and only one block per row is gathered and
# cumulated. A (..., V) intermediate (softmax, cumulative sum, argmax's index
# pairs) is written out in full, which on a CPU costs more than the arithmetic.
# The block is BLOCK entries, or a multiple of 8 near it that divides V (no
# padded copy of the logits: 120 for 4M's 30,000-token text vocabulary).
BLOCK = 128


def block_size(v: int) -> int:
  """BLOCK where it divides `v`, else the multiple of 8 in [64, 256] nearest
  to BLOCK that does, else BLOCK (the logits are then padded)."""
  fits = [b for b in range(64, 257, 8) if v % b == 0]
  return BLOCK if v % BLOCK == 0 or not fits else min(fits, key=lambda b: abs(b - BLOCK))


def _blocked(logits: Array) -> Array:
  """(..., V) -> (..., ceil(V / block), block), padded with -inf."""
  v = logits.shape[-1]
  block = block_size(v)
  pad = -v % block
  if pad:
    logits = jnp.pad(logits, [(0, 0)] * (logits.ndim - 1) + [(0, pad)], constant_values=-jnp.inf)
  return logits.reshape(*logits.shape[:-1], (v + pad) // block, block)


def _pick(blocked: Array, block: Array) -> Array:
  """(..., block size): block number `block` (...) of each row of (..., N, block size)."""
  return jnp.take_along_axis(blocked, block[..., None, None], axis=-2)[..., 0, :]


def _argmax_and_mass(blocked: Array) -> tuple[Array, Array, Array]:
  """(first index of each row's maximum, the maximum, the row's sum of
  exp(logit - maximum))."""
  block_max = jnp.max(blocked, axis=-1)
  j = jnp.argmax(block_max, axis=-1)
  best = (j * blocked.shape[-1] + jnp.argmax(_pick(blocked, j), axis=-1)).astype(jnp.int32)
  top = jnp.max(block_max, axis=-1)
  return best, top, jnp.sum(jnp.exp(blocked - top[..., None, None]), axis=(-2, -1))


def _draw(blocked: Array, inv_t: Array | float, uniform: Array, fallback: Array,
          top: Array) -> tuple[Array, Array]:
  """One index per row of (..., N, block) logits, divided by the temperature
  (times `inv_t`), by the inverse of the row's CDF at its uniform number, and its
  probability. (`jax.random.categorical` draws
  a Gumbel per entry: V random numbers per token, 3.6x slower at an 8k
  vocabulary on a CPU.) An index whose probability is 0 is never drawn; the
  rare one that float rounding could give becomes `fallback`. `top`: each
  row's largest logit (before `inv_t`)."""
  top = top[..., None]
  weights = lambda x, top: jnp.exp((x - top) * inv_t)
  block_mass = jnp.sum(weights(blocked, top[..., None]), axis=-1)
  block_cdf = jnp.cumsum(block_mass, axis=-1)
  total = block_cdf[..., -1]
  u = uniform.astype(jnp.float32) * total
  j = jnp.minimum(jnp.sum(block_cdf <= u[..., None], axis=-1), block_mass.shape[-1] - 1)
  before = jnp.take_along_axis(block_cdf - block_mass, j[..., None], axis=-1)
  inner = weights(_pick(blocked, j), top)
  size = blocked.shape[-1]
  k = jnp.minimum(jnp.sum(before + jnp.cumsum(inner, axis=-1) <= u[..., None], axis=-1),
                  size - 1)
  weight = jnp.take_along_axis(inner, k[..., None], axis=-1)[..., 0]
  fallback_weight = weights(jnp.take_along_axis(blocked.reshape(*blocked.shape[:-2], -1),
                                                fallback[..., None], axis=-1), top)[..., 0]
  ok = weight > 0
  index = jnp.where(ok, j * size + k, fallback).astype(jnp.int32)
  return index, jnp.where(ok, weight, fallback_weight) / total


def guide(cond: Array, uncond: Array, scale: Array | float) -> Array:
  """Classifier-free guidance: uncond + scale * (cond - uncond)."""
  return uncond + jnp.asarray(scale, cond.dtype) * (cond - uncond)
