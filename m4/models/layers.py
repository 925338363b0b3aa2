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


def attention(q: Array, k: Array, v: Array, mask: Array, impl: str | None) -> Array:
  """Softmax attention, (B, T, H, hd) x (B, S, H, hd) -> (B, T, H, hd).

  `mask` (B, 1, T, S) is True where a query may attend. Masked scores get a
  large negative value (not -inf), so a fully masked row is uniform, not NaN.
  """
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


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
               context_mask: Array | None = None) -> Array:
    """Runs all layers: x (B, T, D); mask (B, 1, T, T); context (B, S, D)."""
    cfg = self.cfg
    body = lambda p, h: layer(cfg, p, h, mask, context, context_mask)
    if cfg.remat != "none":
      policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
                if cfg.remat == "dots" else None)
      body = jax.checkpoint(body, policy=policy)
    params = self.stacked()
    if cfg.scan_layers:
      x, _ = jax.lax.scan(lambda h, p: (body(p, h), None), x, params)
      return x
    for i in range(self.depth):
      x = body(jax.tree.map(lambda a: a[i], params), x)
    return x


def _get(p: dict, name: str):
  return p.get(name)


def mlp(cfg: FourMConfig, p: dict, x: Array) -> Array:
  hidden = _dense(x, p["mlp_in"], "btd,dgf->btgf", _get(p, "mlp_in_bias"))
  hidden = sharding.constrain(hidden, ("batch", "length", None, "mlp"))
  if cfg.gated:
    hidden = jax.nn.silu(hidden[:, :, 0]) * hidden[:, :, 1]
  else:
    hidden = jax.nn.gelu(hidden[:, :, 0], approximate=False)
  return _dense(hidden, p["mlp_out"], "btf,fd->btd", _get(p, "mlp_out_bias"))


def self_attention(cfg: FourMConfig, p: dict, x: Array, mask: Array) -> Array:
  qkv = _dense(x, p["qkv"], "btd,dkhe->btkhe", _get(p, "qkv_bias"))
  qkv = sharding.constrain(qkv, ("batch", "length", None, "heads", "kv"))
  out = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask, cfg.attention_impl)
  return _dense(out, p["proj"], "bthe,hed->btd", _get(p, "proj_bias"))


def cross_kv(cfg: FourMConfig, p: dict, context: Array) -> Array:
  """Keys and values of the (normalised) context: (B, S, 2, H, hd)."""
  ctx = layer_norm(context, p["context_norm_scale"], _get(p, "context_norm_bias"), cfg.norm_eps)
  kv = _dense(ctx, p["cross_kv"], "bsd,dkhe->bskhe", _get(p, "cross_kv_bias"))
  return sharding.constrain(kv, ("batch", "length", None, "heads", "kv"))


def cross_attention(cfg: FourMConfig, p: dict, x: Array, kv: Array, mask: Array) -> Array:
  q = _dense(x, p["cross_q"], "btd,dhe->bthe", _get(p, "cross_q_bias"))
  out = attention(q, kv[:, :, 0], kv[:, :, 1], mask, cfg.attention_impl)
  return _dense(out, p["cross_proj"], "bthe,hed->btd", _get(p, "cross_proj_bias"))


def _norm(cfg, p, name, x):
  return layer_norm(x, p[f"{name}_scale"], _get(p, f"{name}_bias"), cfg.norm_eps)


def layer(cfg: FourMConfig, p: dict, x: Array, mask: Array, context: Array | None,
          context_mask: Array | None) -> Array:
  """One encoder layer, or one decoder layer when `context` is given."""
  names = ("batch", "length", "embed")
  x = x + self_attention(cfg, p, _norm(cfg, p, "norm1", x), mask)
  x = sharding.constrain(x, names)
  if context is not None:
    kv = cross_kv(cfg, p, context)
    x = x + cross_attention(cfg, p, _norm(cfg, p, "query_norm", x), kv, context_mask)
    x = sharding.constrain(x, names)
  x = x + mlp(cfg, p, _norm(cfg, p, "norm2", x))
  return sharding.constrain(x, names)


Params = dict[str, Any]
