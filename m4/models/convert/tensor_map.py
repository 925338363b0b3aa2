"""The tensor map: each m4 parameter and the reference tensors it comes from.

`rules(plan)` gives one Rule per m4 parameter (or layer of a stacked one),
with the functions that turn the reference tensors into it and back; the
buffers m4 recomputes (position tables, zero LayerNorm biases) and the tied
copies are listed beside.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from m4 import modalities
from m4.models import embeddings as E
from m4.models.convert.planning import Plan


@dataclasses.dataclass(frozen=True)
class Rule:
  """Reference tensors <-> one m4 parameter (one layer of it when `layer`)."""

  refs: tuple[str, ...]
  path: tuple[str, ...]
  layer: int | None
  to_m4: Callable[..., np.ndarray]
  to_ref: Callable[[np.ndarray], tuple[np.ndarray, ...]]


def _identity():
  return (lambda a: a), (lambda a: (a,))


def _linear():  # (out, in) -> (in, out)
  return (lambda w: w.T), (lambda w: (w.T,))


def _split_out(*shape):  # (out, in) -> (in, *shape)
  return (lambda w: w.T.reshape(w.shape[1], *shape)), (lambda w: (w.reshape(w.shape[0], -1).T,))


def _split_in(*shape):  # (out, in) -> (*shape, out)
  return (lambda w: w.T.reshape(*shape, w.shape[0])), (lambda w: (w.reshape(-1, w.shape[-1]).T,))


def _reshape(*shape):
  return (lambda b: b.reshape(*shape)), (lambda b: (b.reshape(-1),))


def _vector():  # (1, 1, D) -> (D,)
  return (lambda v: v.reshape(-1)), (lambda v: (v.reshape(1, 1, -1),))


def rules(p: Plan) -> tuple[list[Rule], list[tuple[str, np.ndarray]], list[tuple[str, str]]]:
  """(rules, buffers as (name, expected value), ties as (copy, original))."""
  cfg = p.cfg
  d, h, e = cfg.dim, cfg.num_heads, cfg.head_dim
  out, buffers, ties = [], [], []

  def add(refs, path, fns, layer=None):
    refs = (refs,) if isinstance(refs, str) else tuple(refs)
    out.append(Rule(refs, tuple(path), layer, fns[0], fns[1]))

  def attention(ref, part, layer, cross):
    if cross:
      add(f"{ref}.q.weight", (part, "cross_q"), _split_out(h, e), layer)
      add(f"{ref}.kv.weight", (part, "cross_kv"), _split_out(2, h, e), layer)
      add(f"{ref}.proj.weight", (part, "cross_proj"), _split_in(h, e), layer)
      if cfg.qkv_bias:
        add(f"{ref}.q.bias", (part, "cross_q_bias"), _reshape(h, e), layer)
        add(f"{ref}.kv.bias", (part, "cross_kv_bias"), _reshape(2, h, e), layer)
      if cfg.proj_bias:
        add(f"{ref}.proj.bias", (part, "cross_proj_bias"), _identity(), layer)
      return
    add(f"{ref}.qkv.weight", (part, "qkv"), _split_out(3, h, e), layer)
    add(f"{ref}.proj.weight", (part, "proj"), _split_in(h, e), layer)
    if cfg.qkv_bias:
      add(f"{ref}.qkv.bias", (part, "qkv_bias"), _reshape(3, h, e), layer)
    if cfg.proj_bias:
      add(f"{ref}.proj.bias", (part, "proj_bias"), _identity(), layer)

  def mlp(ref, part, layer):
    if cfg.gated:
      fwd = lambda w1, w3: np.stack([w1.T, w3.T], axis=1)
      inv = lambda w: (w[:, 0].T, w[:, 1].T)
      add((f"{ref}.fc1.weight", f"{ref}.fc3.weight"), (part, "mlp_in"), (fwd, inv), layer)
      if cfg.mlp_bias:
        add((f"{ref}.fc1.bias", f"{ref}.fc3.bias"), (part, "mlp_in_bias"),
            (lambda b1, b3: np.stack([b1, b3]), lambda b: (b[0], b[1])), layer)
    else:
      add(f"{ref}.fc1.weight", (part, "mlp_in"), _split_out(1, cfg.mlp_hidden), layer)
      if cfg.mlp_bias:
        add(f"{ref}.fc1.bias", (part, "mlp_in_bias"), _reshape(1, cfg.mlp_hidden), layer)
    add(f"{ref}.fc2.weight", (part, "mlp_out"), _linear(), layer)
    if cfg.mlp_bias:
      add(f"{ref}.fc2.bias", (part, "mlp_out_bias"), _identity(), layer)

  def norm(ref, path, layer=None):  # LayerNorm -> path + "_scale" (and "_bias").
    *where, name = path
    add(f"{ref}.weight", (*where, f"{name}_scale"), _identity(), layer)
    if cfg.norm_bias:
      add(f"{ref}.bias", (*where, f"{name}_bias"), _identity(), layer)
    else:
      buffers.append((f"{ref}.bias", np.zeros((d,), np.float32)))

  for i in range(cfg.encoder_depth):
    ref = f"encoder.{i}"
    norm(f"{ref}.norm1", ("encoder", "norm1"), i)
    attention(f"{ref}.attn", "encoder", i, False)
    norm(f"{ref}.norm2", ("encoder", "norm2"), i)
    mlp(f"{ref}.mlp", "encoder", i)
  for i in range(cfg.decoder_depth):
    ref = f"decoder.{i}"
    norm(f"{ref}.norm1", ("decoder", "norm1"), i)
    attention(f"{ref}.self_attn", "decoder", i, False)
    norm(f"{ref}.query_norm", ("decoder", "query_norm"), i)
    norm(f"{ref}.context_norm", ("decoder", "context_norm"), i)
    attention(f"{ref}.cross_attn", "decoder", i, True)
    norm(f"{ref}.norm2", ("decoder", "norm2"), i)
    mlp(f"{ref}.mlp", "decoder", i)

  add("mask_token", ("mask_token",), _vector())
  norm("encoder_norm", ("encoder_norm",))
  norm("decoder_norm", ("decoder_norm",))
  add("decoder_proj_context.weight", ("context_proj",), _linear())
  add("decoder_proj_context.bias", ("context_proj_bias",), _identity())

  enc = {n: r for r, n in p.names.items() if n in cfg.encoder_modalities}
  dec = {n: r for r, n in p.names.items() if n in cfg.decoder_modalities}
  for name, r in enc.items():
    spec = p.specs[name]
    pre = f"encoder_embeddings.{r}"
    if spec.kind == modalities.PIXELS:
      add(f"{pre}.proj.weight", ("encoder_embed", name), _linear())
    else:
      add(f"{pre}.token_emb.weight", ("encoder_embed", name), _identity())
    add(f"{pre}.mod_emb", ("modality_embed", name), _vector())
    buffers.append((f"{pre}.pos_emb", _positions(spec, cfg.dim)))
  for name, r in dec.items():
    spec = p.specs[name]
    pre = f"decoder_embeddings.{r}"
    add(f"{pre}.token_emb.weight", ("decoder_embed", name), _identity())
    if cfg.tie_heads:
      ties.append((f"{pre}.to_logits.weight", f"{pre}.token_emb.weight"))
    else:
      add(f"{pre}.to_logits.weight", ("heads", name), _identity())
    if name in enc and cfg.share_modality_embeddings:
      ties.append((f"{pre}.mod_emb", f"encoder_embeddings.{enc[name]}.mod_emb"))
    elif name in enc:
      add(f"{pre}.mod_emb", ("decoder_modality_embed", name), _vector())
    else:
      add(f"{pre}.mod_emb", ("modality_embed", name), _vector())
    buffers.append((f"{pre}.pos_emb", _positions(spec, cfg.dim)))
  return out, buffers, ties


def _positions(spec: modalities.Modality, dim: int) -> np.ndarray:
  if spec.kind == modalities.SEQUENCE:
    # The reference builds 512 rows (max_sincos_pos_emb) whatever the length.
    return E.sincos_1d(512, dim)[None]
  return E.sincos_2d(spec.grid[0], spec.grid[1], dim)[None]

