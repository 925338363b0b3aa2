"""The plan: what a reference 4M checkpoint is in m4 terms.

Sizes, depths, biases, vocabularies and grids are read from the tensors; the
rest (heads, modality types, token budgets) from the reference config. 4M
names map onto m4 names:

    tok_rgb@224 -> rgb@224 (image tokens; the number is grid x patch pixels)
    rgb@224     -> rgb_pixels@224 (raw patches, input only)
    caption     -> caption@4m (sequence)
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import numpy as np

from m4 import modalities
from m4 import workdir
from m4.models import configs
from m4.models.convert.source import ConversionError, lookup  # pylint: disable=unused-import

SEQUENCE_NAMES = ("caption", "det", "metadata", "human_poses", "color_palette", "sam_instance")


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
    if lookup(ref_cfg, field, not bad) == bad:
      raise ConversionError(f"reference config {field}={bad} is not supported by m4.")
  if lookup(ref_cfg, "num_register_tokens", 0) or "register_tokens" in tensors:
    raise ConversionError("register tokens (num_register_tokens > 0) are not supported by m4.")
  dim = need("mask_token").shape[-1]
  depth = lambda part: len({int(m.group(1)) for k in tensors
                            if (m := re.match(rf"{part}\.(\d+)\.norm1\.weight$", k))})
  enc_depth, dec_depth = depth("encoder"), depth("decoder")
  if not enc_depth or not dec_depth:
    raise ConversionError(f"found {enc_depth} encoder and {dec_depth} decoder blocks "
                          "(tensors encoder.<i>.norm1.weight / decoder.<i>.norm1.weight).")
  num_heads = lookup(ref_cfg, "num_heads")
  if num_heads is None:
    raise ConversionError("the reference config has no num_heads (pass a config.json).")
  gated = "encoder.0.mlp.fc3.weight" in tensors
  act = str(lookup(ref_cfg, "act_layer", "SiLU" if gated else "GELU"))
  if not gated and "GELU" not in act:
    raise ConversionError(f"act_layer {act!r} without a gated MLP is not supported (GELU only).")
  norm_kwargs = (lookup(ref_cfg, "norm_layer") or {}).get("kwargs", {}) if isinstance(
      lookup(ref_cfg, "norm_layer"), dict) else {}
  norm_bias = lookup(ref_cfg, "norm_bias", norm_kwargs.get("bias"))
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
  mlp_ratio = float(lookup(ref_cfg, "mlp_ratio", 4.0))
  share_mod_emb = lookup(ref_cfg, "share_modality_embeddings")
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
      norm_eps=float(norm_kwargs.get("eps", lookup(ref_cfg, "norm_eps", 1e-6))),
      tie_heads=all(tied.values()) if tied else True,
      share_modality_embeddings=bool(share_mod_emb), patch_size=patch,
      pixel_channels=channels, modality_specs=tuple(specs.values()),
      num_encoder_tokens=int(ref_cfg.get("num_encoder_tokens",
                                         ref_cfg.get("num_input_tokens", 128))),
      num_decoder_tokens=int(ref_cfg.get("num_decoder_tokens",
                                         ref_cfg.get("num_target_tokens", 128))),
      loss_type="token" if ref_cfg.get("loss_type") == "token" else "mod")
  hidden = need("encoder.0.mlp.fc1.weight").shape[0]
  if cfg.mlp_hidden != hidden:
    raise ConversionError(f"encoder.0.mlp.fc1.weight has {hidden} hidden units, but mlp_ratio "
                          f"{mlp_ratio} gives {cfg.mlp_hidden}; set mlp_ratio in config.json.")
  return Plan(cfg=cfg, specs=specs, names=names, skipped=unknown)


def register(p: Plan) -> None:
  """Registers the plan's modalities (an equal entry may already exist)."""
  try:
    modalities.register_from_config({n: s.to_dict() for n, s in p.specs.items()})
  except ValueError as e:
    raise ConversionError(f"{e} Pass --suffix to give the converted modalities other names."
                          ) from None


def plan_from_saved(directory: str) -> Plan:
  """The plan of a converted model (its config.json records the name map)."""
  d = workdir.read_json(os.path.join(directory, "config.json"))
  cfg = configs.from_config(d["model"], d.get("modalities"))
  names = dict(d.get("source", {}).get("names", {}))
  if not names:
    raise ConversionError(f"{directory}/config.json has no source.names (not a converted 4M).")
  specs = {n: cfg.modality(n) for n in names.values()}
  return Plan(cfg=cfg, specs=specs, names=names, skipped=[])

