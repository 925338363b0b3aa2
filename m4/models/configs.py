"""The 4M model's hyper-parameters, its size presets, and parameter counts.

    cfg = configs.preset("B", encoder_modalities=("rgb", "depth"), ...)
    cfg = configs.from_config(config.model)     # from an ml_collections config

A `FourMConfig` is frozen and hashable, so it can be a static argument of
jitted functions. Every field can be set from a config file (`config.model.*`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax

from m4 import modalities
from m4 import workdir

MLP_TYPES = ("swiglu", "gelu")
LOSS_TYPES = ("mod", "token")
REMAT = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION = (None, "xla", "cudnn", "einsum")
BACKWARD = ("auto", "cpu_tuned", "plain")


@dataclasses.dataclass(frozen=True)
class FourMConfig:
  """What a 4M encoder-decoder is.

  Attributes:
    encoder_modalities: registry names the encoder reads (role "input").
    decoder_modalities: registry names the decoder predicts (role "target").
    dim: width D.
    encoder_depth, decoder_depth: numbers of blocks.
    num_heads: attention heads (D must divide by it).
    mlp_ratio: MLP hidden width / D before SwiGLU's 2/3 (4M: 4).
    mlp_type: "swiglu" (fc2(silu(fc1 x) * fc3 x), hidden int(2 r D / 3)) or
      "gelu" (fc2(gelu(fc1 x)), hidden int(r D)).
    qkv_bias, proj_bias, mlp_bias, norm_bias: optional biases (4M's released
      models: all False).
    norm_eps: LayerNorm epsilon.
    tie_heads: each output head is its modality's decoder token embedding.
    share_modality_embeddings: a modality that is both an input and a target
      has one modality embedding for encoder and decoder (4M's default);
      False gives the decoder its own (FourM(share_modality_embeddings=False)).
    patch_size, pixel_channels: patch embedding of `pixels` modalities.
    num_encoder_tokens, num_decoder_tokens: the fixed encoder / decoder slots
      per sample (call arguments may override them).
    loss_type: "mod" (mean over target modalities of each modality's mean
      cross-entropy; 4M's default, same divisor convention) or "token" (the
      plain mean over all target tokens; the reference's "token" option
      instead weights each modality's mean by tokens x vocabulary size, which
      m4 does not reproduce).
    dtype: compute dtype of matmuls (LayerNorm, softmax and losses stay f32).
    param_dtype: dtype parameters are stored in.
    scan_layers: run the blocks with lax.scan over stacked parameters (fast
      compiles); False unrolls them (same parameters, same results).
    remat: "none", "full" (recompute each block in the backward pass) or
      "dots" (keep matmul outputs, recompute the rest).
    attention_impl: `implementation` of jax.nn.dot_product_attention (None:
      let JAX pick; "xla"; "cudnn" for the fused GPU kernel), or "einsum" for
      m4's own head-major einsums (the same math).
    head_chunk_size: tokens per chunk when scoring decoder tokens with their
      modality's head (the loss never materialises all logits at once).
    init_std: std of the normal initialisers (embeddings, mask token).
    backward: "auto" (XLA:CPU-tuned custom backward passes for projections
      and the MLP on CPU, JAX's own elsewhere), "cpu_tuned" or "plain" (the
      same gradients either way).
    modality_specs: what each modality of the model is (m4.modalities.Modality),
      saved with the model; left empty, filled from the modality registry, so
      the built model never reads the registry again.
  """

  encoder_modalities: tuple[str, ...]
  decoder_modalities: tuple[str, ...]
  dim: int = 768
  encoder_depth: int = 12
  decoder_depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  mlp_type: str = "swiglu"
  qkv_bias: bool = False
  proj_bias: bool = False
  mlp_bias: bool = False
  norm_bias: bool = False
  norm_eps: float = 1e-6
  tie_heads: bool = True
  share_modality_embeddings: bool = True
  patch_size: int = 16
  pixel_channels: int = 3
  num_encoder_tokens: int = 128
  num_decoder_tokens: int = 128
  loss_type: str = "mod"
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat: str = "none"
  attention_impl: str | None = None
  head_chunk_size: int = 128
  init_std: float = 0.02
  backward: str = "auto"
  modality_specs: tuple[modalities.Modality, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "encoder_modalities", tuple(self.encoder_modalities))
    object.__setattr__(self, "decoder_modalities", tuple(self.decoder_modalities))
    self.validate()
    object.__setattr__(self, "modality_specs", self._resolve_specs())
    self.check_modalities()

  def _resolve_specs(self) -> tuple[modalities.Modality, ...]:
    """The given specs of the model's modalities, the registry's for the rest."""
    given = {spec.name: spec for spec in self.modality_specs}
    for field in ("encoder_modalities", "decoder_modalities"):
      for name in getattr(self, field):
        if name not in given:
          try:
            given[name] = modalities.get(name)
          except KeyError as e:
            raise workdir.ConfigError(f"config.model.{field}: {e.args[0]}") from None
    return tuple(given[name] for name in self.modality_names)

  def validate(self):
    where = "model"
    req = workdir.require
    req(self.dim > 0 and self.dim % self.num_heads == 0, f"{where}.dim",
        f"{self.dim} must be a positive multiple of num_heads={self.num_heads}.")
    req(self.dim % 4 == 0, f"{where}.dim", "must divide by 4 (2-D sin-cos positions).")
    req(self.encoder_depth >= 1 and self.decoder_depth >= 1, f"{where}.encoder_depth",
        "encoder_depth and decoder_depth must be >= 1.")
    for field, allowed in (("mlp_type", MLP_TYPES), ("loss_type", LOSS_TYPES),
                           ("remat", REMAT), ("dtype", DTYPES), ("param_dtype", DTYPES),
                           ("attention_impl", ATTENTION),
                           ("backward", BACKWARD)):
      value = getattr(self, field)
      req(value in allowed, f"{where}.{field}", f"{value!r} not in {allowed}.")
    req(self.head_chunk_size >= 1, f"{where}.head_chunk_size", "must be >= 1.")
    req(self.num_encoder_tokens >= 1 and self.num_decoder_tokens >= 1,
        f"{where}.num_encoder_tokens", "token counts must be >= 1.")
    req(len(self.encoder_modalities) > 0, f"{where}.encoder_modalities", "is empty.")
    req(len(self.decoder_modalities) > 0, f"{where}.decoder_modalities", "is empty.")
    for field in ("encoder_modalities", "decoder_modalities"):
      names = getattr(self, field)
      req(len(set(names)) == len(names), f"{where}.{field}", f"has duplicates: {names}.")

  @property
  def modality_names(self) -> tuple[str, ...]:
    """Encoder then decoder modalities, each once."""
    return tuple(dict.fromkeys(self.encoder_modalities + self.decoder_modalities))

  def modality(self, name: str) -> modalities.Modality:
    """The spec of one of the model's modalities."""
    for spec in self.modality_specs:
      if spec.name == name:
        return spec
    raise KeyError(f"{name!r} is not a modality of this model; it has {list(self.modality_names)}.")

  # Derived sizes.
  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def mlp_hidden(self) -> int:
    hidden = int(self.dim * self.mlp_ratio)
    return int(2 * hidden / 3) if self.mlp_type == "swiglu" else hidden

  @property
  def gated(self) -> bool:
    return self.mlp_type == "swiglu"

  def check_modalities(self) -> None:
    """Raises ConfigError unless every modality can play its role."""
    for field, role in (("encoder_modalities", modalities.INPUT),
                        ("decoder_modalities", modalities.TARGET)):
      for name in getattr(self, field):
        mod = self.modality(name)
        workdir.require(role in mod.roles, f"model.{field}",
                        f"modality {name!r} cannot be an {role} (roles {mod.roles}).")
        if mod.kind == modalities.PIXELS:
          workdir.require(mod.grid is not None, f"model.{field}", f"{name!r} has no grid.")
        if mod.kind == modalities.SEQUENCE:
          workdir.require(self.dim % 2 == 0, "model.dim", "must be even for 1-D positions.")

  def replace(self, **changes) -> "FourMConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    """The fields (config.json's `model`); the specs are `modalities_dict()`."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
         if f.name != "modality_specs"}
    d["encoder_modalities"] = list(self.encoder_modalities)
    d["decoder_modalities"] = list(self.decoder_modalities)
    return d

  def modalities_dict(self) -> dict[str, dict]:
    """{name: Modality fields} of the model's modalities (config.json's `modalities`)."""
    return {m.name: m.to_dict() for m in self.modality_specs}


# 4M's sizes (apple/ml-4m `fm_*_swiglu_nobias`): depths, width, heads.
SIZES = {
    "tiny": dict(encoder_depth=2, decoder_depth=2, dim=64, num_heads=4),
    "cpu": dict(encoder_depth=4, decoder_depth=4, dim=256, num_heads=4),
    "B": dict(encoder_depth=12, decoder_depth=12, dim=768, num_heads=12),
    "L": dict(encoder_depth=24, decoder_depth=24, dim=1024, num_heads=16),
    "XL": dict(encoder_depth=24, decoder_depth=24, dim=2048, num_heads=32),
}


def preset(size: str, **overrides) -> FourMConfig:
  """A size from SIZES in 4M's released recipe (SwiGLU, no biases, eps 1e-6)."""
  if size not in SIZES:
    raise workdir.ConfigError(f"config.model.size: {size!r} is not one of {sorted(SIZES)}.")
  return FourMConfig(**{**SIZES[size], **overrides})


def from_config(model_config: Mapping[str, Any] | Any,
                modality_specs: Mapping[str, Mapping[str, Any]] | None = None) -> FourMConfig:
  """A FourMConfig from `config.model` (a ConfigDict or dict).

  `size` (optional) names a preset that the other fields override.
  `modality_specs` ({name: Modality fields}, e.g. a saved model's) describe
  the modalities; those it lacks come from the registry.
  """
  d = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
  try:
    specs = modalities.from_config(modality_specs)
  except ValueError as e:
    raise workdir.ConfigError(str(e)) from None
  if specs:
    d["modality_specs"] = tuple(specs)
  size = d.pop("size", None)
  fields = {f.name for f in dataclasses.fields(FourMConfig)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise workdir.ConfigError(f"config.model: unknown fields {unknown}; known: {sorted(fields)}.")
  if size and size not in SIZES:
    raise workdir.ConfigError(f"config.model.size: {size!r} is not one of {sorted(SIZES)}.")
  base = dict(SIZES[size]) if size else {}
  try:
    return FourMConfig(**{**base, **d})
  except TypeError as e:
    raise workdir.ConfigError(f"config.model: {e}") from None


def count_params(state) -> int:
  """Number of scalars in a pytree of arrays (or ShapeDtypeStructs), e.g. an nnx.State."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(state) if hasattr(x, "shape"))
