"""A converted 4M VQ-VAE or DiVAE tokenizer: raw inputs <-> token ids, with 4M's processing.

    tok = m4.tokenizers.load("workdirs/tok_4m_semseg")   # python -m m4.tools.convert_4m_tokenizer
    tokens = tok.encode(semseg)            # (B, 224, 224) class ids -> int32 (B, 14, 14)
    semseg = tok.decode(tokens)            # -> int32 (B, 224, 224)
    semseg, logits = tok.decode(tokens, return_logits=True)
    rgb = m4.tokenizers.load("workdirs/tok_4m_rgb").decode(tokens, steps=25, seed=0)  # DiVAE
    cells, kind = tok.picture(semseg)      # for m4.pictures, drawn as 4M's demo draws them

A DiVAE (RGB, depth, normals, edges) decodes by DDIM sampling from noise:
`steps` (default 25, 4M's demo's), and `noise` (x_T, channels last; the
reference's own noise gives the reference's image) or a `seed`.

Inputs are checked on the host (a ValueError naming the tokenizer); inside
jitted code use `encode_traced` / `decode_traced`. Any size the patches divide
works: the released "224-448" tokenizers resize their position tables as the
reference does. `image_size` and `grid` are the defaults given at conversion.
Tokens are (B, h, w); a model with several codebooks gives (B, n, h, w), and
a 1x1 (MLP) model (B, n). Each modality's units, and 4M's processing of them:

  semseg   (B, H, W) COCO-panoptic class ids in [0, n_labels - 1), 255 =
           unlabelled. The model reads id + 1 (255 -> 0: "no class"), as 4M's
           data pipeline does (SemsegTransform's shift_idx_by_one); feeding it
           unshifted ids is why semseg tokens "do not decode back". Decoded: the
           argmax shifted back (4M's 0 -> 255), int32; the logits on request.
  rgb      (B, H, W, 3) uint8, or float in [0, 1]; normalised with mean 0.5 and
           std 0.5 (Inception's, not ImageNet's), so the model sees [-1, 1].
           Decoded: x * 0.5 + 0.5, float32, not clipped.
  normal   as rgb: 4M normalises surface-normal images with 0.5 / 0.5 too.
  edge     (B, H, W) Canny edge maps in [0, 1]; normalised with 0.5 / 0.5 (one
           channel). Decoded: x * 0.5 + 0.5, (B, H, W), not clipped.
  depth    (B, H, W) depth (4M reads its 16-bit depth PNGs / 65535; the unit
           cancels out unless the variance is near the 1e-6 below). Each image
           is standardised as 4M's DepthTransform does: the mean and unbiased
           variance of the values between the 10 % and 90 % points of its
           sorted pixels, (d - mean) / sqrt(var + 1e-6). Decoded: standardised
           depth (B, H, W); no scale survives.
  mask     (B, H, W) SAM instance masks in [0, 1], read as is. Decoded: the
           sigmoid of the logit; the logits on request.
  feature  (B, h, w, D) feature maps (e.g. CLIP-B/16 final tokens projected to
           512 channels, DINOv2-B/14 patch tokens, at image size / patch), or
           (B, D) global features / human poses for 1x1 (MLP) models; as is.
           Decoded: the same layout.

A directory holds `tokenizer.json` (format "m4.released_vqvae.v1": name,
modality, default image size, the model config (with `family: "divae"` for a
DiVAE), the source) and orbax
`checkpoints/0`; `m4.tokenizers.load` dispatches on the format.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4 import checkpoints
from m4 import workdir
from m4.tokenizers import released_convert
from m4.tokenizers.released_divae import DiVAEConfig, ReleasedDiVAE
from m4.tokenizers.released_vqvae import Config, ReleasedVQVAE

SPEC_FILE = "tokenizer.json"
FORMAT = "m4.released_vqvae.v1"
MODEL_KEY = "model"
MODALITIES = ("semseg", "rgb", "normal", "depth", "edge", "mask", "feature")
UNLABELLED = 255
RGB_TOLERANCE = 1e-3
DEPTH_TRIM = 0.1  # 4M's truncated depth standardisation drops this fraction at each end.
DEFAULT_STEPS = 25  # DDIM steps of a DiVAE decode unless told (4M's demo: 25; edges 10).


def model_config(d: Mapping[str, Any]) -> Config | DiVAEConfig:
  """The model config in tokenizer.json (`family` "divae" for a DiVAE)."""
  return (DiVAEConfig if d.get("family") == "divae" else Config).from_json(d)


def guess_modality(cfg: Config) -> str | None:
  """The modality a config implies, or None when it does not say (rgb vs depth ...)."""
  if cfg.n_labels:
    return "semseg"
  if cfg.encoder_arch()["kind"] != "vit" or not cfg.patch_proj:
    return "feature"
  return None


@dataclasses.dataclass(frozen=True)
class ReleasedSpec:
  """tokenizer.json: what it takes to rebuild a converted tokenizer."""

  name: str
  modality: str
  image_size: tuple[int, int]
  model: Mapping[str, Any]
  source: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  step: int = 0

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), "format": FORMAT}

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str = SPEC_FILE) -> "ReleasedSpec":
    if d.get("format") != FORMAT:
      raise ValueError(f"{where}: format {d.get('format')!r} is not {FORMAT!r}.")
    fields = {f.name for f in dataclasses.fields(cls)}
    missing = {"name", "modality", "image_size", "model"} - set(d)
    if missing:
      raise ValueError(f"{where}: missing fields {sorted(missing)}.")
    d = {k: v for k, v in d.items() if k in fields}
    d["image_size"] = tuple(int(s) for s in d["image_size"])
    if d["modality"] not in MODALITIES:
      raise ValueError(f"{where}: modality {d['modality']!r} is not one of {MODALITIES}.")
    try:
      model_config(d["model"])
    except (TypeError, ValueError) as e:
      raise ValueError(f"{where}: model: {e}") from None
    return cls(**d)


def semseg_to_4m(ids: jax.Array) -> jax.Array:
  """COCO class ids (255 unlabelled) -> the ids 4M's semseg tokenizer reads."""
  return jnp.where(ids == UNLABELLED, 0, ids + 1).astype(jnp.int32)


def semseg_from_4m(logits: jax.Array) -> jax.Array:
  """4M semseg logits (..., n_labels) -> COCO class ids, 255 where "no class" wins."""
  ids = jnp.argmax(logits, axis=-1).astype(jnp.int32) - 1
  return jnp.where(ids < 0, UNLABELLED, ids)


def standardize_depth(depth: jax.Array) -> jax.Array:
  """(B, H, W) -> each image's truncated standardisation (4M's DepthTransform)."""
  flat = depth.reshape(depth.shape[0], -1).astype(jnp.float32)
  n = flat.shape[1]
  kept = jnp.sort(flat, axis=1)[:, int(DEPTH_TRIM * n):int((1 - DEPTH_TRIM) * n)]
  mean = kept.mean(axis=1)
  var = jnp.sum(jnp.square(kept - mean[:, None]), axis=1) / (kept.shape[1] - 1)
  return (depth - mean[:, None, None]) / jnp.sqrt(var + 1e-6)[:, None, None]


class ReleasedTokenizer:
  """Encode raw inputs of one modality to 4M's token ids and back."""

  def __init__(self, model: ReleasedVQVAE | ReleasedDiVAE, spec: ReleasedSpec):
    self.spec = spec
    self.diffusion = isinstance(model, ReleasedDiVAE)
    self.name = spec.name
    self.modality = spec.modality
    self.cfg = model.cfg
    arch = self.cfg.encoder_arch()
    self.vector = arch["kind"] != "vit"  # A 1x1 (MLP) model: (B, D) in, (B, n) tokens.
    self.patch = arch["patch"] if not self.vector else 1
    self.vocab_size = self.cfg.codebook_size
    self.num_codebooks = self.cfg.num_codebooks
    self.image_size = tuple(spec.image_size)
    self.grid = ((self.num_codebooks,) if self.vector else
                 tuple(s // self.cfg.patch_size for s in self.image_size))
    self._graphdef, self._state = nnx.split(model)
    self._encode = jax.jit(self._encode_fn)
    self._decode = jax.jit(self._decode_fn)
    self._sample = jax.jit(self._sample_fn, static_argnames=("steps", "mode"))

  @property
  def model(self) -> ReleasedVQVAE | ReleasedDiVAE:
    return nnx.merge(self._graphdef, self._state)

  # Units: see the module docstring.
  def _prepare(self, x):
    m = self.modality
    if m == "semseg":
      return semseg_to_4m(x)
    if m in ("rgb", "normal"):
      x = x / 255.0 if x.dtype == jnp.uint8 else x
      return (x.astype(jnp.float32) - 0.5) / 0.5
    if m == "edge":
      return (x.astype(jnp.float32)[..., None] - 0.5) / 0.5
    if m == "depth":
      return standardize_depth(x[..., 0] if x.ndim == 4 else x)[..., None]
    if m == "mask":
      return x.astype(jnp.float32)[..., None]
    x = x.astype(jnp.float32)
    return x[:, None, None, :] if x.ndim == 2 else x

  def _postprocess(self, y):
    m = self.modality
    if m == "semseg":
      return semseg_from_4m(y), y
    if m in ("rgb", "normal"):
      return y * 0.5 + 0.5, y
    if m == "edge":
      return y[..., 0] * 0.5 + 0.5, y
    if m == "depth":
      return y[..., 0], y
    if m == "mask":
      return jax.nn.sigmoid(y[..., 0]), y[..., 0]
    return (y[:, 0, 0] if self.vector else y), y

  def _to_model_tokens(self, tokens):
    if self.vector:
      tokens = tokens[:, :, None, None]
      return tokens[:, 0] if self.num_codebooks == 1 else tokens
    return tokens

  def _encode_fn(self, state, x):
    tokens = nnx.merge(self._graphdef, state).encode(self._prepare(x)).tokens
    if self.vector:
      return tokens.reshape(tokens.shape[0], -1)
    return tokens

  def _decode_fn(self, state, tokens):
    return self._postprocess(nnx.merge(self._graphdef, state).decode(
        self._to_model_tokens(tokens)))

  def _sample_fn(self, state, tokens, noise, steps, mode):
    return self._postprocess(nnx.merge(self._graphdef, state).decode(tokens, noise, steps, mode))

  def encode_traced(self, x) -> jax.Array:
    return self._encode_fn(self._state, x)

  def decode_traced(self, tokens, *, steps: int | None = None, seed: int = 0,
                    noise=None) -> tuple[jax.Array, jax.Array]:
    """Tokens -> (decoded raw output, the model's output: channels or logits).
    A DiVAE samples `steps` DDIM steps from `noise`, else from JAX normal noise
    of jax.random.key(seed), at the tokens' grid times the patch size."""
    if not self.diffusion:
      return self._decode_fn(self._state, tokens)
    if noise is None:
      size = tuple(s * self.cfg.patch_size for s in tokens.shape[1:3])
      noise = jax.random.normal(jax.random.key(seed),
                                (tokens.shape[0], *size, self.cfg.n_channels))
    return self._sample_fn(self._state, tokens, noise, int(steps or DEFAULT_STEPS), "trailing")

  def check(self, x) -> np.ndarray:
    """Host-side checks of a raw input (ValueError naming the problem)."""
    x = np.asarray(x)
    m, who = self.modality, f"{self.name} ({self.modality})"
    want = {"semseg": 3, "depth": (3, 4), "mask": 3, "edge": 3, "rgb": 4, "normal": 4,
            "feature": 2 if self.vector else 4}[m]
    if x.ndim not in np.atleast_1d(want):
      raise ValueError(f"{who}: inputs must have {want} dimensions (see"
                       f" m4.tokenizers.released_tokenizer), got shape {x.shape}.")
    channels = {"rgb": 3, "normal": 3, "feature": self.cfg.n_channels,
                "depth": 1 if x.ndim == 4 else None}.get(m)
    if channels and x.shape[-1] != channels:
      raise ValueError(f"{who}: inputs must have {channels} channels (last axis), got shape"
                       f" {x.shape}.")
    if not self.vector and (x.shape[1] % self.patch or x.shape[2] % self.patch):
      raise ValueError(f"{who}: size {x.shape[1:3]} is not a multiple of the patch size"
                       f" {self.patch}.")
    if m == "semseg":
      if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{who}: class ids must be integers, got dtype {x.dtype}.")
      bad = ((x < 0) | (x >= self.cfg.n_labels - 1)) & (x != UNLABELLED)
      if bad.any():
        raise ValueError(f"{who}: class ids must be in [0, {self.cfg.n_labels - 1}) or"
                         f" {UNLABELLED}; found {int(bad.sum())} others, e.g."
                         f" {x[bad][:3].tolist()}.")
      return x.astype(np.int32)
    if x.dtype != np.uint8 or m not in ("rgb", "normal"):
      if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{who}: inputs must be numbers, got dtype {x.dtype}.")
      x = x.astype(np.float32)
      if not np.isfinite(x).all():
        raise ValueError(f"{who}: {int((~np.isfinite(x)).sum())} NaN or inf values.")
      if m in ("rgb", "normal", "mask", "edge") and (x.min() < -RGB_TOLERANCE or
                                             x.max() > 1 + RGB_TOLERANCE):
        raise ValueError(f"{who}: float values must be in [0, 1], got [{x.min()}, {x.max()}].")
    return x

  def check_tokens(self, tokens) -> np.ndarray:
    tokens = np.asarray(tokens)
    ndim = 2 if self.vector else (3 if self.num_codebooks == 1 else 4)
    if tokens.ndim != ndim or self.vector and tokens.shape[1] != self.num_codebooks:
      raise ValueError(f"{self.name}: tokens must have {ndim} dimensions"
                       f"{f' (B, {self.num_codebooks})' if self.vector else ''}, got shape"
                       f" {tokens.shape}.")
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"{self.name}: tokens must be integers, got dtype {tokens.dtype}.")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
      raise ValueError(f"{self.name}: token ids must be in [0, {self.vocab_size}), got"
                       f" [{tokens.min()}, {tokens.max()}].")
    return tokens.astype(np.int32)

  def encode(self, x) -> jax.Array:
    """Raw inputs (module docstring) -> int32 tokens."""
    return self._encode(self._state, self.check(x))

  def noise(self, batch: int, image_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A DiVAE's initial noise x_T: float32 standard normal (B, H, W, C) from
    numpy's default generator seeded with `seed`."""
    return np.random.default_rng(seed).standard_normal(
        (batch, *image_size, self.cfg.n_channels), dtype=np.float32)

  def decode(self, tokens, *, return_logits: bool = False, steps: int | None = None,
             seed: int = 0, noise=None, image_size: tuple[int, int] | None = None,
             mode: str = "trailing"):
    """Tokens -> raw outputs; semseg / mask can also return their logits.

    A DiVAE samples with DDIM: `steps` (default DEFAULT_STEPS), from `noise`
    (x_T, (B, H, W, C), e.g. the reference's torch noise moved to channels
    last) or else `self.noise(..., seed)` (numpy's generator: not the
    reference's torch draws); `image_size` defaults to the tokens' grid times
    the encoder's patch size; `mode` is the timestep spacing (trailing,
    leading, linspace).
    """
    tokens = self.check_tokens(tokens)
    if not self.diffusion:
      if steps is not None or noise is not None:
        raise ValueError(f"{self.name}: steps / noise are for DiVAE (diffusion) tokenizers.")
      out, raw = self._decode(self._state, tokens)
    else:
      size = tuple(image_size or (s * self.cfg.patch_size for s in tokens.shape[1:3]))
      if noise is None:
        noise = self.noise(tokens.shape[0], size, seed)
      want = (tokens.shape[0], *size, self.cfg.n_channels)
      if tuple(np.shape(noise)) != want:
        raise ValueError(f"{self.name}: noise must have shape {want}, got {np.shape(noise)}.")
      out, raw = self._sample(self._state, tokens, jnp.asarray(noise, jnp.float32),
                              steps=int(steps or DEFAULT_STEPS), mode=mode)
    if return_logits:
      if self.modality not in ("semseg", "mask"):
        raise ValueError(f"{self.name}: return_logits is for semseg and mask tokenizers.")
      return out, raw
    return out

  def picture(self, decoded) -> tuple[np.ndarray, str]:
    """Decoded outputs (B, ...) -> (cells, kind) for m4.pictures, as 4M's demo
    draws them: rgb and normals clipped to [0, 1]; depth min-max scaled per
    image through the turbo colour map (near and far are relative); semseg
    COCO ids; edges and masks gray. Feature maps have no picture (ValueError)."""
    x = np.asarray(decoded)
    m = self.modality
    if m in ("rgb", "normal"):
      return np.clip(x, 0.0, 1.0), "rgb"
    if m == "depth":
      import matplotlib  # pylint: disable=g-import-not-at-top
      lo = x.min(axis=(1, 2), keepdims=True)
      scaled = (x - lo) / np.maximum(x.max(axis=(1, 2), keepdims=True) - lo, 1e-6)
      return matplotlib.colormaps["turbo"](scaled)[..., :3].astype(np.float32), "rgb"
    if m == "semseg":
      return x, "semseg"
    if m in ("edge", "mask"):
      return np.clip(x, 0.0, 1.0), "gray"
    raise ValueError(f"{self.name}: a {m} tokenizer's outputs have no picture.")

  def reconstruct(self, x):
    return self.decode(self.encode(x))

  def save(self, path: str) -> str:
    """Writes the tokenizer directory; refuses a path that exists (never overwrites)."""
    if os.path.exists(path):
      raise FileExistsError(f"{path} already exists; not overwriting it.")
    tmp = f"{path.rstrip(os.sep)}.tmp.{os.getpid()}"
    try:
      with checkpoints.Checkpointer(os.path.join(tmp, "checkpoints"), async_save=False) as ckpt:
        ckpt.save(self.spec.step, {MODEL_KEY: self._state})
      workdir.write_json(os.path.join(tmp, SPEC_FILE), self.spec.to_json())
      os.rename(tmp, path)
    finally:
      if os.path.exists(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    return path

  @classmethod
  def from_directory(cls, path: str) -> "ReleasedTokenizer":
    spec_path = os.path.join(path, SPEC_FILE)
    with open(spec_path) as f:
      spec = ReleasedSpec.from_json(json.load(f), where=spec_path)
    cfg = model_config(spec.model)
    model_cls = ReleasedDiVAE if isinstance(cfg, DiVAEConfig) else ReleasedVQVAE
    graphdef, target = nnx.split(nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0))))
    state = checkpoints.restore_subtree(path, target, key=MODEL_KEY, step=spec.step)
    return cls(nnx.merge(graphdef, state), spec)


def is_released(path: str) -> bool:
  """Whether `path` holds a converted 4M tokenizer (tokenizer.json's format)."""
  try:
    with open(os.path.join(path, SPEC_FILE)) as f:
      return json.load(f).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def from_reference(src: str, *, name: str | None = None, modality: str | None = None,
                   image_size: int | None = None, allow_unknown_keys: bool = False):
  """(ReleasedTokenizer, released_convert.Info) of a released tokenizer folder / file.

  `modality` defaults to what the config implies (semseg: class labels;
  feature: no patches, or an MLP); 3- and 1-channel image tokenizers must be
  told (rgb / normal / depth / mask). `image_size` defaults to the config's
  (the position tables' size: 448 for the "224-448" releases).
  """
  err = released_convert.ConversionError
  model, info = released_convert.convert(src, allow_unknown_keys)
  cfg = model.cfg
  implied = guess_modality(cfg)
  modality = modality or implied
  if modality is None:
    raise err(f"{info.config_path}: a {cfg.n_channels}-channel image tokenizer; say which"
              " modality it reads (--modality=rgb, normal, depth, edge or mask).")
  if modality not in MODALITIES:
    raise err(f"modality {modality!r} is not one of {MODALITIES}.")
  need = {"semseg": "semseg", "feature": "feature"}.get(modality)
  channels = {"rgb": 3, "normal": 3, "depth": 1, "edge": 1, "mask": 1}.get(modality)
  diffusion_ok = modality in ("rgb", "normal", "depth", "edge")
  if (implied != need or channels and cfg.n_channels != channels
      or isinstance(cfg, DiVAEConfig) and not diffusion_ok):
    raise err(f"{info.config_path}: modality {modality!r} does not fit this tokenizer"
              f" ({cfg.n_channels} channels, n_labels {cfg.n_labels}, patch_proj"
              f" {cfg.patch_proj}, enc_type {cfg.enc_type!r}; it implies"
              f" {implied or 'an image modality'}).")
  size = int(image_size or cfg.image_size)
  if implied != "feature" or cfg.encoder_arch()["kind"] == "vit":
    if size % cfg.patch_size:
      raise err(f"image size {size} is not a multiple of the patch size {cfg.patch_size}.")
  name = name or os.path.basename(os.path.normpath(src if os.path.isdir(src)
                                                   else os.path.dirname(src) or src))
  spec = ReleasedSpec(name=name, modality=modality, image_size=(size, size), model=cfg.to_json(),
                      source={"path": os.path.abspath(src), "config": info.reference_config,
                              "ignored_keys": info.ignored_keys})
  return ReleasedTokenizer(model, spec), info
