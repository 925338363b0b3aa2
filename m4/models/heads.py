"""Output heads: each decoder token is scored only by its own modality's head.

`grouped_cross_entropy` sorts the decoder tokens of a batch by modality and
walks each modality's tokens in chunks of `chunk` rows, so the work is
sum_m (tokens of m) x V_m (as the reference) rather than every token times
every vocabulary, and no (tokens, V) logits array is ever materialised. The
gradient is computed in the same pass (a fused linear + softmax
cross-entropy with a custom VJP): per chunk, logits, softmax - one-hot, and
the two gradient matmuls, while the chunk is still in cache.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from m4 import sharding

Array = jax.Array


# `cpu_tuned` heads of at least this many words (per device) make the logits'
# gradient before the products that read it: at 4M's vocabularies (4k-30k
# words) the step is 2-4 % faster on a 2-core Xeon; at the scenes' 1k words
# the extra pass costs about 1 % (experiments/train_speed/, "The logits'
# gradient apart").
BARRIER_MIN_VOCAB = 4096


def _run(y, heads, weights, modality, valid, targets, chunk: int, vary: tuple,
         vocab_axes: tuple, cpu_tuned: bool, with_grads: bool):
  """Loss sum, per-modality statistics and (optionally) gradients.

  `vary` names the manual mesh axes (inside shard_map) the rows are split
  over; `vocab_axes` those the heads' vocabularies are split over (each
  device scores its slice; softmax sums and the target's logit are reduced
  over them). `cpu_tuned`: a large head's logits' gradient is made on its own
  before the two products read it (an optimisation barrier; XLA:CPU otherwise
  fuses it into the input gradient's product, which then runs slower).
  """
  def zeros(shape, dtype=jnp.float32, axes=vary):
    z = jnp.zeros(shape, dtype)
    return jax.lax.pcast(z, axes, to="varying") if axes else z

  def over_vocab(reduce, x):
    return reduce(x, vocab_axes) if vocab_axes else x

  b, m, d = y.shape
  n = len(heads)
  total = b * m
  x = y.reshape(total, d)
  key = jnp.where(valid, modality, n).reshape(total).astype(jnp.int32)
  order = jnp.argsort(key, stable=True)
  counts = jnp.bincount(key, length=n + 1)[:n].astype(jnp.int32)
  starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(counts)[:-1]])
  pad = lambda a: jnp.concatenate([a, jnp.zeros((chunk,) + a.shape[1:], a.dtype)])
  xs = pad(x[order])
  ts = pad(targets.reshape(total)[order].astype(jnp.int32))
  ws = pad(weights.reshape(total)[order].astype(jnp.float32))
  carry = dict(loss=zeros(()), ce=zeros((n,)), correct=zeros((n,)))
  if with_grads:
    carry["dx"] = zeros(xs.shape)
  grads = []
  rows_idx = jnp.arange(chunk)
  for i, w_head in enumerate(heads):
    w_c = w_head.astype(y.dtype)

    def body(k, c, i=i, w_c=w_c):
      start = starts[i] + k * chunk
      rows = jax.lax.dynamic_slice_in_dim(xs, start, chunk)
      ok = k * chunk + rows_idx < counts[i]
      t = jnp.where(ok, jax.lax.dynamic_slice_in_dim(ts, start, chunk), 0)
      w = jnp.where(ok, jax.lax.dynamic_slice_in_dim(ws, start, chunk), 0.0)
      logits = jnp.einsum("cd,vd->cv", rows, w_c, preferred_element_type=jnp.float32)
      local_v = logits.shape[1]
      # The target's column in this device's vocabulary slice (if it is there).
      col = t - (jax.lax.axis_index(vocab_axes) * local_v if vocab_axes else 0)
      here = (col >= 0) & (col < local_v)
      # One exp pass serves the loss and its gradient.
      top = over_vocab(jax.lax.pmax, jnp.max(logits, axis=-1))
      e = jnp.exp(logits - top[:, None])
      total = over_vocab(jax.lax.psum, jnp.sum(e, axis=-1))
      picked = jnp.take_along_axis(logits, jnp.clip(col, 0, local_v - 1)[:, None], axis=1)[:, 0]
      picked = over_vocab(jax.lax.psum, jnp.where(here, picked, 0.0))
      ce = top + jnp.log(total) - picked
      c = dict(c)
      c["loss"] = c["loss"] + jnp.sum(w * ce)
      c["ce"] = c["ce"].at[i].add(jnp.sum(jnp.where(ok, ce, 0.0)))
      hit = ok & (picked >= top)  # The target has the largest logit.
      c["correct"] = c["correct"].at[i].add(jnp.sum(hit.astype(jnp.float32)))
      if with_grads:
        onehot = jnp.arange(local_v)[None, :] == col[:, None]
        g = e * (w / total)[:, None] - jnp.where(onehot, w[:, None], 0.0)
        g = g.astype(y.dtype)
        if cpu_tuned and local_v >= BARRIER_MIN_VOCAB:
          g = jax.lax.optimization_barrier(g)
        dx_rows = over_vocab(jax.lax.psum, jnp.einsum("cv,vd->cd", g, w_c,
                                                      preferred_element_type=jnp.float32))
        old = jax.lax.dynamic_slice_in_dim(c["dx"], start, chunk)
        c["dx"] = jax.lax.dynamic_update_slice_in_dim(c["dx"], old + dx_rows, start, 0)
        c[f"dw{i}"] = c[f"dw{i}"] + jnp.einsum("cv,cd->vd", g, rows,
                                               preferred_element_type=jnp.float32)
      return c

    if with_grads:
      carry[f"dw{i}"] = zeros(w_head.shape, axes=vary + vocab_axes)
    num_chunks = (counts[i] + chunk - 1) // chunk
    carry = jax.lax.fori_loop(0, num_chunks, body, carry)
    if with_grads:
      grads.append(carry.pop(f"dw{i}").astype(w_head.dtype))
  stats = (carry["ce"], carry["correct"], counts.astype(jnp.float32))
  if not with_grads:
    return carry["loss"], stats, None
  inverse = jnp.argsort(order)
  dx = carry["dx"][:total][inverse].reshape(b, m, d).astype(y.dtype)
  return carry["loss"], stats, (dx, tuple(grads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _grouped(y, heads, weights, modality, valid, targets, chunk, vary, vocab_axes, cpu_tuned):
  loss, stats, _ = _run(y, heads, weights, modality, valid, targets, chunk, vary, vocab_axes,
                        cpu_tuned, False)
  return loss, stats


def _grouped_fwd(y, heads, weights, modality, valid, targets, chunk, vary, vocab_axes,
                 cpu_tuned):
  loss, stats, (dx, dws) = _run(y, heads, weights, modality, valid, targets, chunk, vary,
                                vocab_axes, cpu_tuned, True)
  return (loss, stats), (dx, dws, weights, modality, valid, targets)


def _grouped_bwd(chunk, vary, vocab_axes, cpu_tuned, res, cotangents):
  del chunk, vocab_axes, cpu_tuned
  dx, dws, weights, modality, valid, targets = res
  g = cotangents[0]
  dws = tuple((g * dw).astype(dw.dtype) for dw in dws)
  if vary:  # Every row shard holds the heads (or its vocabulary slice): sum over them.
    dws = jax.lax.psum(dws, vary)
  zero = lambda a: (jnp.zeros_like(a) if jnp.issubdtype(a.dtype, jnp.floating)
                    else None)
  return ((g * dx).astype(dx.dtype), dws, zero(weights), zero(modality), zero(valid),
          zero(targets))


_grouped.defvjp(_grouped_fwd, _grouped_bwd)


def grouped_cross_entropy(y: Array, heads: Sequence[Array], *, modality: Array,
                          valid: Array, targets: Array, weights: Array,
                          chunk: int = 128, cpu_tuned: bool = False):
  """Weighted softmax cross-entropy, each token under its modality's head.

  Args:
    y: (B, M, D) decoder outputs.
    heads: per modality index i, its (V_i, D) output matrix.
    modality: (B, M) int, index into `heads` (ignored where not valid).
    valid: (B, M) bool.
    targets: (B, M) int target ids.
    weights: (B, M) float loss weight of each token (not differentiated).
    chunk: rows per matmul.
    cpu_tuned: XLA:CPU scheduling hints (the model passes `layers.cpu_tuned(cfg)`).

  Returns:
    (loss, (ce_sum, correct, count)): loss = sum of weights * cross-entropy
    over valid tokens; per modality the summed cross-entropy, the number of
    tokens whose argmax is the target, and the number of tokens (float32).

  Under `m4.sharding.use(mesh, ...)` each device scores its own rows of the
  batch (shard_map over the batch's mesh axes) against its slice of each
  head's vocabulary (the `vocab` rule; softmax sums reduced over it), and the
  sums are reduced over devices, instead of sorting the global batch.
  """
  heads = tuple(heads)
  mesh, rules = sharding.current()
  if mesh is None or mesh.size == 1:
    return _grouped(y, heads, weights, modality, valid, targets, int(chunk), (), (),
                    bool(cpu_tuned))
  axes = sharding.mesh_axes(sharding.logical_to_spec((sharding.BATCH,), rules)[0])
  # The heads keep the parameters' `vocab` split (where every vocabulary divides it).
  vocab_axes = tuple(a for a in sharding.mesh_axes(sharding.logical_to_spec(("vocab",), rules)[0])
                     if a not in axes)
  split = math.prod(mesh.shape[a] for a in vocab_axes)
  if any(h.shape[0] % split for h in heads):
    vocab_axes = ()
  rows = P(axes or None)
  head_spec = P(vocab_axes or None, None)

  def local(y, heads, weights, modality, valid, targets):
    loss, stats = _grouped(y, heads, weights, modality, valid, targets, int(chunk), axes,
                           vocab_axes, bool(cpu_tuned))
    if axes:
      loss, stats = jax.lax.psum((loss, stats), axes)
    return loss, stats

  return jax.shard_map(local, mesh=mesh,
                       in_specs=(rows, (head_spec,) * len(heads), rows, rows, rows, rows),
                       out_specs=(P(), P()))(y, heads, weights, modality, valid, targets)


def logits(y: Array, head: Array) -> Array:
  """(..., D) x (V, D) -> (..., V) float32 logits."""
  return jnp.einsum("...d,vd->...v", y, head.astype(y.dtype), preferred_element_type=jnp.float32)
