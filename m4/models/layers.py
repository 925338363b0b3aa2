"""Transformer blocks with stacked parameters: 4M's encoder and decoder layers.

Each `Blocks` module holds the parameters of all its layers stacked on a
leading `layers` axis and runs them with `lax.scan` (one compiled layer) or
unrolled. The math of one layer is a plain function of a dict of arrays:

    encoder layer: h += Attn(LN1 h); h += MLP(LN2 h)
    decoder layer: y += SelfAttn(LN1 y); y += CrossAttn(LNq y, LNctx ctx);
                   y += MLP(LN2 y)

Weights are stored (in, out) with heads split out: qkv (D, 3, H, hd),
proj (H, hd, D), cross q (D, H, hd), cross kv (D, 2, H, hd), mlp_in
(D, G, F) with G = 2 for SwiGLU ([fc1; fc3]) and 1 for GELU, mlp_out (F, D).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from m4 import sharding
from m4.models.configs import FourMConfig

Array = jax.Array


def xavier_uniform(fan_in: int, fan_out: int):
  """U(-b, b) with b = sqrt(6 / (fan_in + fan_out)), whatever the array's shape.

  4M initialises its fused qkv / kv projections per part (q, k, v), so the
  fans are given explicitly rather than read from the (stacked) shape.
  """
  bound = math.sqrt(6.0 / (fan_in + fan_out))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def normal(std: float):
  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.normal(key, shape, dtype)
  return init


def constant(value: float):
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.full(shape, value, dtype)
  return init


def make_param(rngs: nnx.Rngs, init: Callable, shape, names, dtype) -> nnx.Param:
  """A parameter with logical axis names (m4.sharding maps them to the mesh)."""
  assert len(shape) == len(names), (shape, names)
  return nnx.Param(nnx.with_partitioning(init, tuple(names))(rngs.params(), tuple(shape), dtype))


def layer_norm(x: Array, scale: Array, bias: Array | None, eps: float) -> Array:
  """LayerNorm over the last axis, computed in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y.astype(x.dtype)


def _dense(x: Array, w: Array, spec: str, b: Array | None = None) -> Array:
  y = jnp.einsum(spec, x, w.astype(x.dtype))
  return y if b is None else y + b.astype(x.dtype)


# XLA:CPU fuses elementwise producers (norms, activation derivatives) into the
# transposed copies that weight-gradient matmuls need, and those fused copies
# are slow. The two ops below give the backward pass explicitly and pin its
# intermediates with optimization barriers, so each is computed once and the
# matmuls read plain arrays. The math is unchanged. They are used only where
# `cpu_tuned(cfg)`: other backends get JAX's own backward pass (and the
# sharding constraints that the fused MLP's flattened layout cannot carry).


def cpu_tuned(cfg: FourMConfig) -> bool:
  """Whether the projections and the MLP use the XLA:CPU-tuned backward passes."""
  if cfg.backward == "auto":
    return jax.default_backend() == "cpu"
  return cfg.backward == "cpu_tuned"


@jax.custom_vjp
def linear(x: Array, w: Array) -> Array:
  """(T, K) x (K, N) -> (T, N)."""
  return x @ w


def _linear_fwd(x, w):
  return x @ w, (x, w)


def _linear_bwd(res, g):
  x, w = res
  g, x = jax.lax.optimization_barrier((g, x))
  return g @ w.T, x.T @ g


linear.defvjp(_linear_fwd, _linear_bwd)


def _mlp_forward(act, x, w_in, w_out):
  h = [x @ w_in[:, k] for k in range(w_in.shape[1])]
  hidden = act(h[0]) * h[1] if len(h) == 2 else act(h[0])
  return hidden @ w_out, (h, hidden)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_mlp(act, x: Array, w_in: Array, w_out: Array) -> Array:
  """act(x w_in[:, 0]) [* x w_in[:, 1]] w_out; x (T, D), w_in (D, G, F)."""
  return _mlp_forward(act, x, w_in, w_out)[0]


def _fused_mlp_fwd(act, x, w_in, w_out):
  y, (h, hidden) = _mlp_forward(act, x, w_in, w_out)
  return y, (x, w_in, w_out, h, hidden)


def _fused_mlp_bwd(act, res, g):
  x, w_in, w_out, h, hidden = res
  g, hidden, x = jax.lax.optimization_barrier((g, hidden, x))
  d_out = hidden.T @ g
  d_hidden = g @ w_out.T
  a, act_vjp = jax.vjp(act, h[0])
  if len(h) == 2:
    dh = [act_vjp(d_hidden * h[1])[0], d_hidden * a]
  else:
    dh = [act_vjp(d_hidden)[0]]
  dh = jax.lax.optimization_barrier(dh)
  dx = sum(d @ w_in[:, k].T for k, d in enumerate(dh))
  d_in = jnp.stack([x.T @ d for d in dh], axis=1)
  return dx, d_in, d_out


fused_mlp.defvjp(_fused_mlp_fwd, _fused_mlp_bwd)


def _attention_weights(scores: Array, mask: Array, dtype) -> Array:
  """Softmax over the last axis of float32 scores, masked entries at a large
  negative value (not -inf: a fully masked row is uniform, not NaN)."""
  scores = jnp.where(mask, scores, -0.7 * jnp.finfo(jnp.float32).max)
  return jax.nn.softmax(scores, axis=-1).astype(dtype)


def attention(q: Array, k: Array, v: Array, mask: Array, impl: str | None) -> Array:
  """Softmax attention, (B, T, H, hd) x (B, S, H, hd) -> (B, T, H, hd).

  `mask` (B, 1, T, S) is True where a query may attend. Masked scores get a
  large negative value (not -inf), so a fully masked row is uniform, not NaN.
  `impl` is jax.nn.dot_product_attention's implementation (None: JAX picks,
  "cudnn": the fused GPU kernel), or "einsum": the same math as explicit
  einsums in a head-major layout (fewer transposes on CPU).
  """
  if impl != "einsum":
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
  scale = 1.0 / math.sqrt(q.shape[-1])
  scores = jnp.einsum("bthe,bshe->bhts", q, k, preferred_element_type=jnp.float32) * scale
  return jnp.einsum("bhts,bshe->bthe", _attention_weights(scores, mask, v.dtype), v)


class Blocks(nnx.Module):
  """`depth` pre-norm transformer layers (decoder layers when `cross`)."""

  def __init__(self, cfg: FourMConfig, depth: int, *, cross: bool, rngs: nnx.Rngs):
    self.cfg = cfg
    self.depth = depth
    self.cross = cross
    d, h, e, f = cfg.dim, cfg.num_heads, cfg.head_dim, cfg.mlp_hidden
    g = 2 if cfg.gated else 1
    dt = jnp.dtype(cfg.param_dtype)
    L = depth
    p = lambda init, shape, names: make_param(rngs, init, (L, *shape), ("layers", *names), dt)
    ones, zeros = constant(1.0), constant(0.0)

    def norm(name):
      setattr(self, f"{name}_scale", p(ones, (d,), (None,)))
      if cfg.norm_bias:
        setattr(self, f"{name}_bias", p(zeros, (d,), (None,)))

    norm("norm1")
    self.qkv = p(xavier_uniform(d, d), (d, 3, h, e), ("embed", None, "heads", "kv"))
    if cfg.qkv_bias:
      self.qkv_bias = p(zeros, (3, h, e), (None, "heads", "kv"))
    self.proj = p(xavier_uniform(d, d), (h, e, d), ("heads", "kv", "embed"))
    if cfg.proj_bias:
      self.proj_bias = p(zeros, (d,), (None,))
    if cross:
      norm("query_norm")
      norm("context_norm")
      self.cross_q = p(xavier_uniform(d, d), (d, h, e), ("embed", "heads", "kv"))
      self.cross_kv = p(xavier_uniform(d, d), (d, 2, h, e), ("embed", None, "heads", "kv"))
      if cfg.qkv_bias:
        self.cross_q_bias = p(zeros, (h, e), ("heads", "kv"))
        self.cross_kv_bias = p(zeros, (2, h, e), (None, "heads", "kv"))
      self.cross_proj = p(xavier_uniform(d, d), (h, e, d), ("heads", "kv", "embed"))
      if cfg.proj_bias:
        self.cross_proj_bias = p(zeros, (d,), (None,))
    norm("norm2")
    self.mlp_in = p(xavier_uniform(d, f), (d, g, f), ("embed", None, "mlp"))
    self.mlp_out = p(xavier_uniform(f, d), (f, d), ("mlp", "embed"))
    if cfg.mlp_bias:
      self.mlp_in_bias = p(zeros, (g, f), (None, "mlp"))
      self.mlp_out_bias = p(zeros, (d,), (None,))

  # The parameters of all layers as a dict of stacked arrays.
  def stacked(self) -> dict[str, Array]:
    return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Param)}

  def __call__(self, x: Array, mask: Array, context: Array | None = None,
               context_mask: Array | None = None, *, every_layer: bool = False) -> Array:
    """Runs all layers: x (B, T, D); mask (B, 1, T, T); context (B, S, D).
    Returns the last layer's output or, `every_layer`, each layer's (L, B, T, D)."""
    cfg = self.cfg
    body = lambda p, h: layer(cfg, p, h, mask, context, context_mask)
    if cfg.remat != "none":
      policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
                if cfg.remat == "dots" else None)
      body = jax.checkpoint(body, policy=policy)
    params = self.stacked()
    if cfg.scan_layers:
      def scan_body(h, p):
        h = body(p, h)
        return h, (h if every_layer else None)
      x, outs = jax.lax.scan(scan_body, x, params)
      return outs if every_layer else x
    outs = []
    for i in range(self.depth):
      x = body(jax.tree.map(lambda a: a[i], params), x)
      if every_layer:
        outs.append(x)
    return jnp.stack(outs) if every_layer else x

  def layer_params(self) -> tuple[dict[str, Array], ...]:
    """Each layer's parameters, sliced out of the stacked ones."""
    params = self.stacked()
    return tuple(jax.tree.map(lambda a, i=i: a[i], params) for i in range(self.depth))

  def context_kv(self, context: Array, layers=None) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """Each layer's keys and values of the context, head-major: two tuples of
    L (B, H, S, hd) arrays (the layout `step` reads without a transpose).
    `layers`: `layer_params()`, if already sliced."""
    kv = [cross_kv(self.cfg, p, context) for p in layers or self.layer_params()]
    return tuple(tuple(_head_major(t[j]) for t in kv) for j in (0, 1))

  def step(self, x: Array, cache: dict[str, Any], index: Array,
           context_mask: Array) -> tuple[Array, dict[str, Any]]:
    """One new token per sample through all decoder layers with a KV cache.

    Args:
      x: (B, 1, D) the new token's input.
      cache: "k", "v": L (B, H, S, hd) self-attention keys / values of the
        previous tokens (slot `index` is written); "cross_k", "cross_v": L
        (B, H, N, hd) from `context_kv`; "layers": `layer_params()`, sliced
        once per decoding rather than once per token (a copy of the
        decoder's weights for the decoding's length). One array per layer,
        head-major, so a step reads and writes the cache in place. The
        layers are unrolled whatever `cfg.scan_layers` says: compile time
        grows with the depth.
      index: () int32, the new token's slot in the cache.
      context_mask: (B, 1, 1, N) True at valid context tokens.
    """
    ks, vs = list(cache["k"]), list(cache["v"])
    for i, p in enumerate(cache["layers"]):
      x, ks[i], vs[i] = cached_layer(self.cfg, p, x, ks[i], vs[i], index,
                                     (cache["cross_k"][i], cache["cross_v"][i]), context_mask)
    return x, dict(cache, k=tuple(ks), v=tuple(vs))


def _get(p: dict, name: str):
  return p.get(name)


def _silu(x):
  return jax.nn.silu(x)


def _gelu(x):
  return jax.nn.gelu(x, approximate=False)


def mlp(cfg: FourMConfig, p: dict, x: Array) -> Array:
  w_in, b_in = p["mlp_in"].astype(x.dtype), _get(p, "mlp_in_bias")
  act = _silu if cfg.gated else _gelu
  if b_in is None and _get(p, "mlp_out_bias") is None and cpu_tuned(cfg):
    b, t, d = x.shape
    y = fused_mlp(act, x.reshape(b * t, d), w_in, p["mlp_out"].astype(x.dtype))
    return y.reshape(b, t, d)
  names = ("act_batch", "act_length", "act_mlp")
  bias = lambda k: None if b_in is None else b_in[k]
  h1 = sharding.constrain(_dense(x, w_in[:, 0], "btd,df->btf", bias(0)), names)
  if cfg.gated:
    h3 = sharding.constrain(_dense(x, w_in[:, 1], "btd,df->btf", bias(1)), names)
    hidden = act(h1) * h3
  else:
    hidden = act(h1)
  return _dense(hidden, p["mlp_out"], "btf,fd->btd", _get(p, "mlp_out_bias"))


def _linear_nd(cfg: FourMConfig, x: Array, w: Array, n_in: int,
               b: Array | None = None) -> Array:
  """Contracts x's last `n_in` dims with w's first `n_in` dims (via `linear`
  where `cpu_tuned`)."""
  w = w.astype(x.dtype)
  if cpu_tuned(cfg):
    lead, k = x.shape[:x.ndim - n_in], math.prod(w.shape[:n_in])
    y = linear(x.reshape(-1, k), w.reshape(k, -1)).reshape(lead + w.shape[n_in:])
  else:
    y = jnp.tensordot(x, w, axes=(tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))))
  return y if b is None else y + b.astype(x.dtype)


def _project(cfg: FourMConfig, x: Array, w: Array, b: Array | None) -> Array:
  """A fused (D, K, H, hd) projection: (B, T, K, H, hd)."""
  y = _linear_nd(cfg, x, w, 1, b)
  return sharding.constrain(y, ("act_batch", "act_length", None, "act_heads", "act_kv"))


def self_attention(cfg: FourMConfig, p: dict, x: Array, mask: Array) -> Array:
  qkv = _project(cfg, x, p["qkv"], _get(p, "qkv_bias"))
  out = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask, cfg.attention_impl)
  return _linear_nd(cfg, out, p["proj"], 2, _get(p, "proj_bias"))


def cross_kv(cfg: FourMConfig, p: dict, context: Array) -> tuple[Array, Array]:
  """Keys and values of the (normalised) context, each (B, S, H, hd)."""
  ctx = layer_norm(context, p["context_norm_scale"], _get(p, "context_norm_bias"), cfg.norm_eps)
  kv = _project(cfg, ctx, p["cross_kv"], _get(p, "cross_kv_bias"))
  return kv[:, :, 0], kv[:, :, 1]


def cross_attention(cfg: FourMConfig, p: dict, x: Array, kv: tuple[Array, Array],
                    mask: Array) -> Array:
  q = _linear_nd(cfg, x, p["cross_q"], 1, _get(p, "cross_q_bias"))
  out = attention(q, kv[0], kv[1], mask, cfg.attention_impl)
  return _linear_nd(cfg, out, p["cross_proj"], 2, _get(p, "cross_proj_bias"))


def _norm(cfg, p, name, x):
  return layer_norm(x, p[f"{name}_scale"], _get(p, f"{name}_bias"), cfg.norm_eps)


def layer(cfg: FourMConfig, p: dict, x: Array, mask: Array, context: Array | None,
          context_mask: Array | None) -> Array:
  """One encoder layer, or one decoder layer when `context` is given."""
  names = ("act_batch", "act_length", "act_embed")
  x = x + self_attention(cfg, p, _norm(cfg, p, "norm1", x), mask)
  x = sharding.constrain(x, names)
  if context is not None:
    kv = cross_kv(cfg, p, context)
    x = x + cross_attention(cfg, p, _norm(cfg, p, "query_norm", x), kv, context_mask)
    x = sharding.constrain(x, names)
  x = x + mlp(cfg, p, _norm(cfg, p, "norm2", x))
  return sharding.constrain(x, names)


def _head_major(t: Array) -> Array:
  """(B, T, H, hd) -> (B, H, T, hd)."""
  return jnp.swapaxes(t, 1, 2)


def _cached_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
  """`attention` for queries (B, 1, H, hd) over head-major keys / values
  (B, H, S, hd); mask (B, 1, 1, S) or broadcastable."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  scores = jnp.einsum("bhte,bhse->bhts", _head_major(q), k,
                      preferred_element_type=jnp.float32) * scale
  return _head_major(jnp.einsum("bhts,bhse->bhte", _attention_weights(scores, mask, v.dtype), v))


def cached_layer(cfg: FourMConfig, p: dict, x: Array, k_cache: Array, v_cache: Array,
                 index: Array, cross: tuple[Array, Array], context_mask: Array):
  """`layer` for one new decoder token that attends to cached ones (causal);
  caches head-major (B, H, S, hd). Self- and cross-attention are
  `self_attention` and `cross_attention` over those layouts, always as
  `_cached_attention` (`cfg.attention_impl` is for whole sequences);
  tests/test_fourm.py checks them against teacher forcing."""
  qkv = _project(cfg, _norm(cfg, p, "norm1", x), p["qkv"], _get(p, "qkv_bias"))
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  k_cache = jax.lax.dynamic_update_slice_in_dim(
      k_cache, _head_major(k).astype(k_cache.dtype), index, axis=2)
  v_cache = jax.lax.dynamic_update_slice_in_dim(
      v_cache, _head_major(v).astype(v_cache.dtype), index, axis=2)
  mask = (jnp.arange(k_cache.shape[2]) <= index)[None, None, None, :]
  out = _cached_attention(q, k_cache, v_cache, mask)
  x = x + _linear_nd(cfg, out, p["proj"], 2, _get(p, "proj_bias"))
  q = _linear_nd(cfg, _norm(cfg, p, "query_norm", x), p["cross_q"], 1, _get(p, "cross_q_bias"))
  out = _cached_attention(q, cross[0], cross[1], context_mask)
  x = x + _linear_nd(cfg, out, p["cross_proj"], 2, _get(p, "cross_proj_bias"))
  x = x + mlp(cfg, p, _norm(cfg, p, "norm2", x))
  return x, k_cache, v_cache
