"""Converts a reference 4M checkpoint (apple/ml-4m, safetensors) to m4, and back.

    python -m m4.tools.convert_4m --src=model.safetensors --out=DIR
    python -m m4.tools.convert_4m --src=FOLDER --check=FOLDER     # parity check
    python -m m4.tools.convert_4m --src=DIR --to_reference=model.safetensors

`--src` is a .safetensors file or a folder holding `model.safetensors` and,
optionally, a `config.json` (the reference's model config: num_heads and, if
present, modality types, sequence lengths, token budgets; otherwise the
safetensors metadata is read). Sizes, depths, biases, vocabularies and grids
are read from the tensors themselves.

`--out DIR` writes DIR/config.json (the m4 model config and the modalities it
registers) and DIR/checkpoints/0 (orbax, via m4.checkpoints); load it with
`m4.models.pretrained.load(DIR)`. 4M names map onto m4 names:

    tok_rgb@224 -> rgb@224 (image tokens; the number is grid x patch pixels)
    rgb@224     -> rgb_pixels@224 (raw patches, input only)
    caption     -> caption@4m (sequence)

Tied weights are loaded once (the copy must be equal); buffers (position
tables, zero LayerNorm biases) are recomputed and compared, not loaded. A
missing tensor, a wrong shape, an unused tensor or an unknown modality is an
error naming it (`--skip_unknown` drops unknown modalities instead).

`--check FOLDER` runs m4 on a reference run saved in the fixture format
(inputs.npz, logits.npz, config.json; see tests/fixtures/ml4m_tiny/README.md)
and prints one JSON line with the largest logit and loss differences; the
exit status is 1 beyond tolerance (logits 1e-5, losses 1e-6).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Callable

import numpy as np

from m4 import modalities
from m4 import workdir
from m4.models import configs
from m4.models import embeddings as E

LOGIT_TOL = 1e-5
LOSS_TOL = 1e-6
SEQUENCE_NAMES = ("caption", "det", "metadata", "human_poses", "color_palette", "sam_instance")


class ConversionError(ValueError):
  """The source checkpoint does not fit; the message names the tensor or field."""


# ------------------------------------------------------------------ reading


def read_source(src: str) -> tuple[dict[str, np.ndarray], dict]:
  """(tensors, reference config) of a .safetensors file or a folder with one."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  path = src
  if os.path.isdir(src):
    found = [f for f in sorted(os.listdir(src)) if f.endswith(".safetensors")]
    if not found:
      raise FileNotFoundError(f"no .safetensors file in {src!r}.")
    path = os.path.join(src, "model.safetensors" if "model.safetensors" in found else found[0])
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path!r} does not exist.")
  tensors, meta = {}, {}
  with safe_open(path, framework="numpy") as f:
    meta = dict(f.metadata() or {})
    for k in f.keys():
      tensors[k] = f.get_tensor(k)
  ref_cfg = {}
  cfg_path = os.path.join(os.path.dirname(path), "config.json")
  if os.path.exists(cfg_path):
    with open(cfg_path) as f:
      ref_cfg = json.load(f)
  else:  # Released checkpoints keep their args as (YAML/JSON) strings in metadata.
    for k, v in meta.items():
      try:
        ref_cfg[k] = json.loads(v)
      except (TypeError, ValueError):
        ref_cfg[k] = v
  return tensors, ref_cfg


def _lookup(ref_cfg: dict, key: str, default=None):
  """A field of the reference config, top level or under `fourm_kwargs`."""
  if key in ref_cfg:
    return ref_cfg[key]
  return ref_cfg.get("fourm_kwargs", {}).get(key, default)


# ------------------------------------------------------------------ the plan


@dataclasses.dataclass
class Plan:
  """What the reference checkpoint is, in m4 terms."""

  cfg: configs.FourMConfig
  specs: dict[str, modalities.Modality]  # m4 name -> registry entry
  names: dict[str, str]  # reference name -> m4 name
  skipped: list[str]

  def m4(self, ref_name: str) -> str:
    return self.names[ref_name]


def _m4_name(ref: str, kind: str, grid, patch: int, suffix: str) -> str:
  base = ref.split("@")[0]
  if kind == modalities.SEQUENCE:
    return f"{base}@4m{suffix}"
  px = f"{grid[0] * patch}" if grid[0] == grid[1] else f"{grid[0] * patch}x{grid[1] * patch}"
  if kind == modalities.IMAGE:
    return f"{base[4:] if base.startswith('tok_') else base}@{px}{suffix}"
  return f"{base}_pixels@{px}{suffix}"


def _kind(ref: str, tensors: dict, ref_cfg: dict) -> str | None:
  """The m4 kind of reference modality `ref`, or None if m4 cannot hold it."""
  enc, dec = f"encoder_embeddings.{ref}.", f"decoder_embeddings.{ref}."
  has = lambda suffix: enc + suffix in tensors or dec + suffix in tensors
  typ = ref_cfg.get("modalities", {}).get(ref, {}).get("type")
  extra = [k for k in tensors if k.startswith((enc, dec)) and not k.endswith(
      ("token_emb.weight", "to_logits.weight", "mod_emb", "pos_emb", "proj.weight"))]
  if extra:
    return None
  if enc + "proj.weight" in tensors and typ in (None, "img"):
    return modalities.PIXELS
  if not has("token_emb.weight"):
    return None
  if typ == "img" or (typ is None and ref.startswith("tok_")):
    return modalities.IMAGE
  if typ == "seq" or (typ is None and ref in SEQUENCE_NAMES):
    return modalities.SEQUENCE
  return None


def plan(tensors: dict[str, np.ndarray], ref_cfg: dict, *, suffix: str = "",
         skip_unknown: bool = False) -> Plan:
  """Reads sizes from the tensors and the rest from the reference config."""
  def need(name):
    if name not in tensors:
      raise ConversionError(f"missing tensor {name!r}.")
    return tensors[name]

  for field, bad in (("qk_norm", True), ("decoder_causal_mask", True),
                     ("decoder_sep_mask", False)):
    if _lookup(ref_cfg, field, not bad) == bad:
      raise ConversionError(f"reference config {field}={bad} is not supported by m4.")
  if _lookup(ref_cfg, "num_register_tokens", 0) or "register_tokens" in tensors:
    raise ConversionError("register tokens (num_register_tokens > 0) are not supported by m4.")
  dim = need("mask_token").shape[-1]
  depth = lambda part: len({int(m.group(1)) for k in tensors
                            if (m := re.match(rf"{part}\.(\d+)\.norm1\.weight$", k))})
  enc_depth, dec_depth = depth("encoder"), depth("decoder")
  if not enc_depth or not dec_depth:
    raise ConversionError(f"found {enc_depth} encoder and {dec_depth} decoder blocks "
                          "(tensors encoder.<i>.norm1.weight / decoder.<i>.norm1.weight).")
  num_heads = _lookup(ref_cfg, "num_heads")
  if num_heads is None:
    raise ConversionError("the reference config has no num_heads (pass a config.json).")
  gated = "encoder.0.mlp.fc3.weight" in tensors
  act = str(_lookup(ref_cfg, "act_layer", "SiLU" if gated else "GELU"))
  if not gated and "GELU" not in act:
    raise ConversionError(f"act_layer {act!r} without a gated MLP is not supported (GELU only).")
  norm_kwargs = (_lookup(ref_cfg, "norm_layer") or {}).get("kwargs", {}) if isinstance(
      _lookup(ref_cfg, "norm_layer"), dict) else {}
  norm_bias = _lookup(ref_cfg, "norm_bias", norm_kwargs.get("bias"))
  if norm_bias is None:  # Infer: no-bias LayerNorms store zero buffers.
    norm_bias = any(np.any(v != 0) for k, v in tensors.items()
                    if re.search(r"norm\d?\.bias$|_norm\.bias$", k))
  patch = int(ref_cfg.get("patch_size", 16))

  refs = []
  for k in tensors:
    m = re.match(r"(?:en|de)coder_embeddings\.([^.]+)\.", k)
    if m and m.group(1) not in refs:
      refs.append(m.group(1))
  enc_refs = [r for r in refs if any(k.startswith(f"encoder_embeddings.{r}.") for k in tensors)]
  dec_refs = [r for r in refs if any(k.startswith(f"decoder_embeddings.{r}.") for k in tensors)]
  for key, found in (("encoder_modalities", enc_refs), ("decoder_modalities", dec_refs)):
    order = ref_cfg.get(key) or ref_cfg.get("domains_in" if key[0] == "e" else "domains_out")
    if order:
      found.sort(key=lambda r, order=order: order.index(r) if r in order else len(order))
  kinds = {r: _kind(r, tensors, ref_cfg) for r in refs}
  unknown = sorted(r for r, k in kinds.items() if k is None)
  if unknown and not skip_unknown:
    raise ConversionError(f"modalities m4 cannot convert: {unknown} (pass --skip_unknown to "
                          "drop them).")

  specs, names = {}, {}
  for r in refs:
    kind = kinds[r]
    if kind is None:
      continue
    info = ref_cfg.get("modalities", {}).get(r, {})
    roles = tuple(role for role, group in ((modalities.INPUT, enc_refs),
                                           (modalities.TARGET, dec_refs)) if r in group)
    where = "encoder" if r in enc_refs else "decoder"
    if kind == modalities.SEQUENCE:
      length = int(info.get("num_tokens", info.get("max_tokens", 256)))
      vocab = need(f"{where}_embeddings.{r}.token_emb.weight").shape[0]
      grid = None
      num_tokens = length
    else:
      pos = need(f"{where}_embeddings.{r}.pos_emb")
      n = pos.shape[1]
      grid = tuple(info.get("grid") or (int(round(math.sqrt(n))),) * 2)
      if grid[0] * grid[1] != n:
        raise ConversionError(f"{where}_embeddings.{r}.pos_emb has {n} rows, not a square grid;"
                              " give modalities.<name>.grid in config.json.")
      num_tokens = n
      if kind == modalities.PIXELS:
        vocab = 0
        fan_in = need(f"encoder_embeddings.{r}.proj.weight").shape[1]
        if fan_in % (patch * patch):
          raise ConversionError(f"encoder_embeddings.{r}.proj.weight: {fan_in} inputs is not "
                                f"channels x patch_size^2 (patch_size {patch}).")
      else:
        vocab = need(f"{where}_embeddings.{r}.token_emb.weight").shape[0]
    name = _m4_name(r, kind, grid, patch, suffix)
    base = r.split("@")[0]
    data_key = base[4:] if base.startswith("tok_") else base
    specs[name] = modalities.Modality(name, kind, vocab_size=vocab, num_tokens=num_tokens,
                                      grid=grid, roles=roles, data_key=data_key)
    names[r] = name

  tied = {}
  for r in dec_refs:
    if r not in names:
      continue
    head = f"decoder_embeddings.{r}.to_logits.weight"
    emb = need(f"decoder_embeddings.{r}.token_emb.weight")
    tied[r] = head not in tensors or np.array_equal(tensors[head], emb)
  if len(set(tied.values())) > 1:
    raise ConversionError(f"m4 ties all heads or none; tied: {[r for r, t in tied.items() if t]}, "
                          f"untied: {[r for r, t in tied.items() if not t]}.")
  pixels = [specs[names[r]] for r in enc_refs if kinds[r] == modalities.PIXELS]
  channels = 3
  if pixels:
    r = next(r for r in enc_refs if kinds[r] == modalities.PIXELS)
    channels = tensors[f"encoder_embeddings.{r}.proj.weight"].shape[1] // (patch * patch)
  mlp_ratio = float(_lookup(ref_cfg, "mlp_ratio", 4.0))
  share_mod_emb = _lookup(ref_cfg, "share_modality_embeddings")
  if share_mod_emb is None:  # Infer: shared modality embeddings are stored as equal copies.
    share_mod_emb = all(np.array_equal(tensors[f"decoder_embeddings.{r}.mod_emb"],
                                       tensors[f"encoder_embeddings.{r}.mod_emb"])
                        for r in dec_refs if r in enc_refs and r in names
                        and f"decoder_embeddings.{r}.mod_emb" in tensors
                        and f"encoder_embeddings.{r}.mod_emb" in tensors)
  cfg = configs.FourMConfig(
      encoder_modalities=tuple(names[r] for r in enc_refs if r in names),
      decoder_modalities=tuple(names[r] for r in dec_refs if r in names),
      dim=dim, encoder_depth=enc_depth, decoder_depth=dec_depth, num_heads=int(num_heads),
      mlp_ratio=mlp_ratio, mlp_type="swiglu" if gated else "gelu",
      qkv_bias="encoder.0.attn.qkv.bias" in tensors,
      proj_bias="encoder.0.attn.proj.bias" in tensors,
      mlp_bias="encoder.0.mlp.fc1.bias" in tensors, norm_bias=bool(norm_bias),
      norm_eps=float(norm_kwargs.get("eps", _lookup(ref_cfg, "norm_eps", 1e-6))),
      tie_heads=all(tied.values()) if tied else True,
      share_modality_embeddings=bool(share_mod_emb), patch_size=patch,
      pixel_channels=channels,
      num_encoder_tokens=int(ref_cfg.get("num_encoder_tokens", ref_cfg.get("num_input_tokens", 128))),
      num_decoder_tokens=int(ref_cfg.get("num_decoder_tokens", ref_cfg.get("num_target_tokens", 128))),
      loss_type="token" if ref_cfg.get("loss_type") == "token" else "mod")
  hidden = need("encoder.0.mlp.fc1.weight").shape[0]
  if cfg.mlp_hidden != hidden:
    raise ConversionError(f"encoder.0.mlp.fc1.weight has {hidden} hidden units, but mlp_ratio "
                          f"{mlp_ratio} gives {cfg.mlp_hidden}; set mlp_ratio in config.json.")
  return Plan(cfg=cfg, specs=specs, names=names, skipped=unknown)


# ------------------------------------------------------------------ the mapping


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

  def block_norm(ref, part, name, layer):
    add(f"{ref}.weight", (part, f"{name}_scale"), _identity(), layer)
    if cfg.norm_bias:
      add(f"{ref}.bias", (part, f"{name}_bias"), _identity(), layer)
    else:
      buffers.append((f"{ref}.bias", np.zeros((d,), np.float32)))

  for i in range(cfg.encoder_depth):
    ref = f"encoder.{i}"
    block_norm(f"{ref}.norm1", "encoder", "norm1", i)
    attention(f"{ref}.attn", "encoder", i, False)
    block_norm(f"{ref}.norm2", "encoder", "norm2", i)
    mlp(f"{ref}.mlp", "encoder", i)
  for i in range(cfg.decoder_depth):
    ref = f"decoder.{i}"
    block_norm(f"{ref}.norm1", "decoder", "norm1", i)
    attention(f"{ref}.self_attn", "decoder", i, False)
    block_norm(f"{ref}.query_norm", "decoder", "query_norm", i)
    block_norm(f"{ref}.context_norm", "decoder", "context_norm", i)
    attention(f"{ref}.cross_attn", "decoder", i, True)
    block_norm(f"{ref}.norm2", "decoder", "norm2", i)
    mlp(f"{ref}.mlp", "decoder", i)

  add("mask_token", ("mask_token",), _vector())
  for ref, path in (("encoder_norm", "encoder_norm"), ("decoder_norm", "decoder_norm")):
    add(f"{ref}.weight", (f"{path}_scale",), _identity())
    if cfg.norm_bias:
      add(f"{ref}.bias", (f"{path}_bias",), _identity())
    else:
      buffers.append((f"{ref}.bias", np.zeros((d,), np.float32)))
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


# ------------------------------------------------------------------ conversion


def _abstract_params(cfg: configs.FourMConfig) -> dict:
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from m4.models.fourm import FourM  # pylint: disable=g-import-not-at-top
  model = nnx.eval_shape(lambda: FourM(cfg, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _get_path(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set_path(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def register(p: Plan) -> None:
  """Registers the plan's modalities (an equal entry may already exist)."""
  try:
    modalities.register_from_config({n: s.to_dict() for n, s in p.specs.items()})
  except ValueError as e:
    raise ConversionError(f"{e} Pass --suffix to give the converted modalities other names."
                          ) from None


def to_m4(tensors: dict[str, np.ndarray], p: Plan, *, atol: float = 1e-6) -> dict:
  """The m4 parameters (a pure dict of numpy arrays) of reference `tensors`."""
  register(p)
  expected = _abstract_params(p.cfg)
  the_rules, buffers, ties = rules(p)
  used = set()
  stacks: dict[tuple, dict[int, np.ndarray]] = {}
  params: dict = {}
  for rule in the_rules:
    shape = tuple(_get_path(expected, rule.path).shape)
    if rule.layer is not None:
      shape = shape[1:]
    want = rule.to_ref(np.zeros(shape, np.float32))
    arrays = []
    for ref, w in zip(rule.refs, want):
      if ref not in tensors:
        raise ConversionError(f"missing tensor {ref!r} (for m4 parameter {'/'.join(rule.path)}).")
      a = np.asarray(tensors[ref], np.float32)
      if a.shape != w.shape:
        raise ConversionError(f"tensor {ref!r} has shape {a.shape}; expected {w.shape} "
                              f"(m4 parameter {'/'.join(rule.path)}).")
      arrays.append(a)
      used.add(ref)
    value = rule.to_m4(*arrays)
    if rule.layer is None:
      _set_path(params, rule.path, value)
    else:
      stacks.setdefault(rule.path, {})[rule.layer] = value
  for path, layers in stacks.items():
    _set_path(params, path, np.stack([layers[i] for i in range(len(layers))]))
  for name, value in buffers:
    if name not in tensors:
      continue  # Buffers are recomputed; a checkpoint may omit them.
    used.add(name)
    got = np.asarray(tensors[name], np.float32)
    rows = min(got.shape[1], value.shape[1]) if got.ndim == 3 else None
    if got.ndim != value.ndim or (rows is None and got.shape != value.shape):
      raise ConversionError(f"buffer {name!r} has shape {got.shape}; expected {value.shape}.")
    diff = np.max(np.abs(got[:, :rows] - value[:, :rows])) if rows else np.max(np.abs(got - value))
    if diff > atol:
      raise ConversionError(f"buffer {name!r} differs from m4's recomputed value by {diff:.3g}.")
  for copy, original in ties:
    if copy not in tensors:
      continue
    used.add(copy)
    if not np.array_equal(tensors[copy], tensors[original]):
      raise ConversionError(f"tensor {copy!r} should equal {original!r} (tied), but differs.")
  skipped = tuple(f"{part}_embeddings.{r}." for r in p.skipped for part in ("encoder", "decoder"))
  unused = sorted(k for k in tensors if k not in used and not k.startswith(skipped))
  if unused:
    raise ConversionError(f"tensors m4 does not use: {unused[:20]}"
                          f"{' ...' if len(unused) > 20 else ''}.")
  return params


def to_reference(params: dict, p: Plan) -> dict[str, np.ndarray]:
  """The reference state dict (tied copies and buffers included) of m4 params."""
  the_rules, buffers, ties = rules(p)
  out = {}
  for rule in the_rules:
    value = np.asarray(_get_path(params, rule.path), np.float32)
    if rule.layer is not None:
      value = value[rule.layer]
    for ref, a in zip(rule.refs, rule.to_ref(value)):
      out[ref] = np.ascontiguousarray(a, np.float32)
  for name, value in buffers:
    out[name] = np.array(value)
  for copy, original in ties:
    out[copy] = out[original].copy()
  return out


def plan_from_saved(directory: str) -> Plan:
  """The plan of a converted model (its config.json records the name map)."""
  d = workdir.read_json(os.path.join(directory, "config.json"))
  modalities.register_from_config(d.get("modalities"))
  cfg = configs.from_config(d["model"])
  names = dict(d.get("source", {}).get("names", {}))
  if not names:
    raise ConversionError(f"{directory}/config.json has no source.names (not a converted 4M).")
  specs = {n: modalities.get(n) for n in names.values()}
  return Plan(cfg=cfg, specs=specs, names=names, skipped=[])


# ------------------------------------------------------------------ checking


def reference_batch(inputs: dict[str, np.ndarray], p: Plan) -> dict:
  """A batch in the reference's convention (masks True = not selected) in m4's."""
  batch = {}
  for r, name in p.names.items():
    if f"{r}__tensor" not in inputs:
      continue
    t = inputs[f"{r}__tensor"]
    spec = p.specs[name]
    if spec.kind != modalities.PIXELS:
      t = t.reshape(t.shape[0], -1).astype(np.int32)
    else:  # (B, C, H, W) -> (B, H, W, C)
      t = np.transpose(t, (0, 2, 3, 1)).astype(np.float32)
    d = {"tensor": t}
    for key in ("input_mask", "target_mask"):
      if f"{r}__{key}" in inputs:
        d[key] = ~inputs[f"{r}__{key}"].astype(bool)
    dam = inputs.get(f"{r}__decoder_attention_mask")
    d["decoder_attention_mask"] = (np.zeros(d["input_mask"].shape, np.int32) if dam is None
                                   else dam.astype(np.int32))
    d.setdefault("target_mask", np.zeros(d["input_mask"].shape, bool))
    batch[name] = d
  return batch


def check(model, p: Plan, folder: str) -> dict:
  """Largest differences between m4 and a reference run saved in `folder`."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  with open(os.path.join(folder, "config.json")) as f:
    ref_cfg = json.load(f)
  inputs = dict(np.load(os.path.join(folder, "inputs.npz")))
  ref = dict(np.load(os.path.join(folder, "logits.npz")))
  batch = reference_batch(inputs, p)
  n_enc = int(ref_cfg["num_encoder_tokens"])
  n_dec = int(ref_cfg["num_decoder_tokens"])
  mod_ids = {r: info["id"] for r, info in ref_cfg["modalities"].items()}

  @nnx.jit(static_argnums=(2, 3))
  def forward(model, batch, n_enc, n_dec):
    enc = model.encode(batch, n_enc)
    dec = model.decode(batch, enc, n_dec)
    loss, metrics = model.loss(batch, dec)
    logits = {n: model.logits(dec.out, n) for n in model.cfg.decoder_modalities if n in batch}
    return logits, dec.slots, loss, metrics

  logits, slots, loss, metrics = jax.device_get(forward(model, batch, n_enc, n_dec))
  report = {"logits": {}, "losses": {}}
  ref_mod = ref["decoder_mod_mask"]
  for r, name in p.names.items():
    if name not in logits:
      continue
    j = model.cfg.decoder_modalities.index(name)
    mine = _by_position(logits[name], slots.modality == j, slots.position, slots.valid)
    src_pos = np.load(os.path.join(folder, "intermediates.npz"))["dec_src_pos"]
    theirs = _by_position(ref[r], ref_mod == mod_ids[r], src_pos, ref["decoder_valid"])
    if set(mine) != set(theirs):
      raise ConversionError(f"{name}: m4 decodes {len(mine)} target tokens, the reference "
                            f"{len(theirs)}; the token selection differs.")
    diffs = [float(np.max(np.abs(mine[k] - theirs[k]))) for k in mine]
    report["logits"][name] = max(diffs) if diffs else 0.0
    report["losses"][name] = abs(float(metrics[f"loss/{name}"]) - float(ref[f"loss__{r}"]))
  report["losses"]["total"] = abs(float(loss) - float(ref["loss"]))
  report["max_logit_diff"] = max(report["logits"].values())
  report["max_loss_diff"] = max(report["losses"].values())
  report["ok"] = report["max_logit_diff"] <= LOGIT_TOL and report["max_loss_diff"] <= LOSS_TOL
  return report


def _by_position(values, is_mod, position, valid) -> dict:
  out = {}
  b_idx, s_idx = np.nonzero(np.asarray(is_mod) & np.asarray(valid))
  for b, s in zip(b_idx, s_idx):
    out[(int(b), int(position[b, s]))] = values[b, s]
  return out


# ------------------------------------------------------------------ main


def convert(src: str, out: str | None = None, *, suffix: str = "",
            skip_unknown: bool = False):
  """Converts `src`; writes `out` when given. Returns (model, plan)."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from m4.models import pretrained  # pylint: disable=g-import-not-at-top
  from m4.models.fourm import FourM  # pylint: disable=g-import-not-at-top

  tensors, ref_cfg = read_source(src)
  p = plan(tensors, ref_cfg, suffix=suffix, skip_unknown=skip_unknown)
  params = to_m4(tensors, p)
  model = nnx.eval_shape(lambda: FourM(p.cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, params))
  nnx.update(model, state)
  if out:
    pretrained.save(out, model, extra={"source": {"path": os.path.abspath(src),
                                                  "names": p.names, "skipped": p.skipped}})
  return model, p


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  del argv
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  try:
    if f.to_reference:
      from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
      from flax import nnx  # pylint: disable=g-import-not-at-top
      from m4.models import pretrained  # pylint: disable=g-import-not-at-top
      p = plan_from_saved(f.src)
      model = pretrained.load(f.src)
      params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
      save_file(to_reference(params, p), f.to_reference)
      print(json.dumps({"wrote": f.to_reference}))
      return 0
    model, p = convert(f.src, f.out, suffix=f.suffix, skip_unknown=f.skip_unknown)
    summary = {"modalities": p.names, "skipped": p.skipped}
    if f.out:
      summary["out"] = f.out
    if not f.check:
      print(json.dumps(summary))
      return 0
    report = check(model, p, f.check)
    print(json.dumps(report, sort_keys=True))
    return 0 if report["ok"] else 1
  except (ConversionError, workdir.ConfigError, FileNotFoundError, FileExistsError) as e:
    print(f"convert_4m: error: {e}", file=sys.stderr)
    return 2


def run():
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("src", None, "A .safetensors file or a folder with one (and config.json).")
  flags.DEFINE_string("out", None, "Directory to write the m4 model to.")
  flags.DEFINE_string("check", None, "A reference run (fixture format) to compare against.")
  flags.DEFINE_string("to_reference", None, "With --src=<converted m4 dir>: write the "
                      "reference state dict to this .safetensors file.")
  flags.DEFINE_string("suffix", "", "Appended to every converted modality name.")
  flags.DEFINE_bool("skip_unknown", False, "Drop modalities m4 cannot convert.")
  flags.mark_flag_as_required("src")
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()
