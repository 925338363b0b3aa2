"""The released 4M VQ-VAE tokenizers (apple/ml-4m `VQVAE`), eval-time, in NNX.

    model, _ = released_convert.convert("4M_tokenizers_semseg_4k_224-448")   # or:
    model = ReleasedVQVAE(Config(enc_type="vit_b_enc", ...), rngs=nnx.Rngs(0))
    enc = model.encode(x)          # x: (B, H, W, C) or semseg ids (B, H, W), 4M's units
    enc.tokens                     # int32 (B, h, w); (B, n_codebooks, h, w) with several
    enc.codes                      # (B, h, w, latent_dim): the quantizer's output
    out = model.decode(enc.tokens) # (B, H, W, C_out): channels, or semseg logits

What it computes (the reference at eval time, channels last):

  input      semseg: class ids -> a learned embedding (`cls_emb`, n_labels x
             n_channels); else the values as given (see released_tokenizer
             for each modality's units).
  encoder    ViT: patches (`patch_proj`; a 1x1 projection of a feature map
             otherwise) + the stored position table, resized bicubically
             (PyTorch's, A = -0.75, no antialiasing) when the token grid differs
             from the table's, then pre-norm blocks (LayerNorm eps 1e-6, exact
             GELU, 4x MLP) and an optional tanh MLP (`post_mlp`), no final norm;
             or a BottleneckMLP applied per position (LayerNorm eps 1e-5).
  quant_proj a linear map to `latent_dim`.
  quantizer  `lucid` (every released ViT VQ-VAE): the code whose l2-normalised
             entry is most cosine-similar to the l2-normalised latent; the
             output is that (stored, unnormalised) codebook row. `memcodes`
             (global features, poses): per codebook (head), the argmax of
             (latent * d**-0.5) . (codes W_k); the output is codes W_v of the
             chosen entries, heads concatenated.
  decoder    post_quant_proj, then a ViT (its own position table; patches back
             to pixels, optional two ConvNeXt blocks `out_conv`) or an MLP.

Not implemented (no released VQ-VAE uses them; conversion refuses them): lucid
with several codebooks, Euclidean codebooks (`norm_codes=False`), `undo_std`,
and the plain `MLP/...` models. Sizes come from the reference's preset names:
`vit_{s,b,l}_{enc,dec}` (width/depth/heads 512/8/8, 768/12/12, 1024/24/16) or,
for test fixtures, `vit_d<width>_l<depth>_h<heads>_{enc,dec}`; MLPs from ids
like `BottleneckMLP/B_6-Wi_1024[-Ex_4]` (blocks, width, expansion).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Mapping, NamedTuple

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

VIT_PRESETS = {"s": (512, 8, 8), "b": (768, 12, 12), "l": (1024, 24, 16)}
VIT_EPS = 1e-6  # The reference's ViT LayerNorms (and ConvNeXt's).
MLP_EPS = 1e-5  # torch.nn.LayerNorm's default, used by its MLP models.


@dataclasses.dataclass(frozen=True)
class Config:
  """A reference VQVAE's eval-time arguments, under the reference's names."""

  enc_type: str = "vit_b_enc"
  dec_type: str = "vit_b_dec"
  n_channels: int = 3
  n_labels: int | None = None
  image_size: int = 224
  image_size_enc: int | None = None
  image_size_dec: int | None = None
  patch_size: int = 16
  patch_size_dec: int | None = None
  patch_proj: bool = True
  post_mlp: bool = False
  out_conv: bool = False
  quant_type: str = "lucid"
  codebook_size: int = 16384
  num_codebooks: int = 1
  latent_dim: int = 32

  @property
  def out_channels(self) -> int:
    return self.n_labels or self.n_channels

  def encoder_arch(self) -> dict[str, Any]:
    return _arch(self.enc_type, "enc", self.patch_size, self.image_size_enc or self.image_size,
                 self.patch_proj)

  def decoder_arch(self) -> dict[str, Any]:
    return _arch(self.dec_type, "dec", self.patch_size_dec or self.patch_size,
                 self.image_size_dec or self.image_size, self.patch_proj)

  def validate(self) -> "Config":
    """Raises ValueError naming the field this module cannot compute."""
    self.encoder_arch()
    self.decoder_arch()
    check_quantizer(self)
    return self

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "Config":
    return config_from_json(cls, d)


def config_from_json(cls, d: Mapping[str, Any]):
  """`cls(**d)`, validated; a field `cls` does not have is a ValueError naming it."""
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ValueError(f"unknown model fields {unknown}; known: {sorted(known)}.")
  return cls(**d).validate()


def check_quantizer(cfg) -> None:
  """Raises ValueError unless `cfg`'s quantizer fields name one m4 computes."""
  if cfg.quant_type not in ("lucid", "memcodes"):
    raise ValueError(f"quant_type {cfg.quant_type!r}: only 'lucid' and 'memcodes' exist.")
  if cfg.quant_type == "lucid" and cfg.num_codebooks != 1:
    raise ValueError(f"num_codebooks={cfg.num_codebooks} with the lucid quantizer is not"
                     " supported (no released tokenizer uses it).")
  if cfg.quant_type == "memcodes" and cfg.latent_dim % cfg.num_codebooks:
    raise ValueError(f"latent_dim {cfg.latent_dim} is not a multiple of num_codebooks"
                     f" {cfg.num_codebooks}.")


def _arch(name: str, part: str, patch: int, image_size: int, patch_proj: bool) -> dict:
  """The sizes a preset name stands for: {kind, width, depth, heads, ...}."""
  field = f"{part}_type"
  m = re.fullmatch(rf"vit_([sbl])_{part}", name)
  c = re.fullmatch(rf"vit_d(\d+)_l(\d+)_h(\d+)_{part}", name)
  if m or c:
    width, depth, heads = VIT_PRESETS[m.group(1)] if m else (int(g) for g in c.groups())
    if image_size % patch:
      raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}.")
    if width % heads:
      raise ValueError(f"{field} {name!r}: width {width} is not a multiple of {heads} heads.")
    return dict(kind="vit", width=width, depth=depth, heads=heads,
                patch=patch if patch_proj else 1, grid=image_size // patch)
  m = re.fullmatch(r"BottleneckMLP/B_(\d+)-Wi_(\d+)(?:-Ex_(\d+))?", name)
  if m:
    return dict(kind="mlp", depth=int(m.group(1)), width=int(m.group(2)),
                wide=int(m.group(2)) * int(m.group(3) or 4))
  raise ValueError(f"{field} {name!r} is not a VQ-VAE {part}oder m4 knows: vit_{{s,b,l}}_{part},"
                   f" vit_d<width>_l<depth>_h<heads>_{part} or BottleneckMLP/B_<n>-Wi_<width>"
                   "[-Ex_<k>] (diffusion decoders are DiVAE's, not a VQ-VAE's).")


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / max(|x|, 1e-12), as torch.nn.functional.normalize."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.lru_cache(maxsize=None)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of PyTorch's bicubic resize (align_corners=False).

  Cubic convolution with A = -0.75 at source (i + 0.5) * n_in / n_out - 0.5,
  reads clamped at the borders, no antialiasing when shrinking.
  """
  a = -0.75
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  m = np.zeros((n_out, n_in), np.float64)
  scale = n_in / n_out
  for o in range(n_out):
    src = scale * (o + 0.5) - 0.5
    i = math.floor(src)
    t = src - i
    for k, w in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
      m[o, min(max(i - 1 + k, 0), n_in - 1)] += w
  return m.astype(np.float32)


def resize_positions(table: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """A (gh, gw, D) position table at another grid, as the reference resizes it."""
  gh, gw, _ = table.shape
  if (gh, gw) == tuple(grid):  # The reference's resize is then the identity.
    return table
  return jnp.einsum("ij,jkd,lk->ild", bicubic_matrix(gh, grid[0]), table,
                    bicubic_matrix(gw, grid[1]))


def _linear(din, dout, rngs):
  return nnx.Linear(din, dout, rngs=rngs)


def _norm(d, eps, rngs):
  return nnx.LayerNorm(d, epsilon=eps, use_fast_variance=False, rngs=rngs)


def _gelu(x):
  return jax.nn.gelu(x, approximate=False)


class Block(nnx.Module):
  """Pre-norm transformer block: x += Attn(LN x); x += MLP(LN x)."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    self.heads = heads
    self.norm1 = _norm(width, VIT_EPS, rngs)
    self.qkv = _linear(width, 3 * width, rngs)
    self.proj = _linear(width, width, rngs)
    self.norm2 = _norm(width, VIT_EPS, rngs)
    self.fc1 = _linear(width, 4 * width, rngs)
    self.fc2 = _linear(4 * width, width, rngs)

  def __call__(self, x):  # (B, N, D)
    q, k, v = einops.rearrange(self.qkv(self.norm1(x)), "b n (s h e) -> s b h n e", s=3,
                               h=self.heads)
    scores = jnp.einsum("bhne,bhme->bhnm", q, k) * q.shape[-1] ** -0.5
    y = jnp.einsum("bhnm,bhme->bhne", jax.nn.softmax(scores, axis=-1), v)
    x = x + self.proj(einops.rearrange(y, "b h n e -> b n (h e)"))
    return x + self.fc2(_gelu(self.fc1(self.norm2(x))))


class PostMLP(nnx.Module):
  """The residual tanh MLP after the encoder's / before the decoder's projection."""

  def __init__(self, width: int, *, rngs: nnx.Rngs):
    self.norm = _norm(width, VIT_EPS, rngs)
    self.fc1 = _linear(width, 4 * width, rngs)
    self.fc2 = _linear(4 * width, width, rngs)

  def __call__(self, x):
    return x + self.fc2(jnp.tanh(self.fc1(self.norm(x))))


class ConvNeXtBlock(nnx.Module):
  """x += gamma * Linear(GELU(Linear(LN(depthwise 7x7 conv x)))), channels last."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.dwconv = nnx.Conv(dim, dim, (7, 7), padding=((3, 3), (3, 3)),
                           feature_group_count=dim, rngs=rngs)
    self.norm = _norm(dim, VIT_EPS, rngs)
    self.pwconv1 = _linear(dim, 4 * dim, rngs)
    self.pwconv2 = _linear(4 * dim, dim, rngs)
    self.gamma = nnx.Param(jnp.full((dim,), 1e-6, jnp.float32))

  def __call__(self, x):
    y = self.pwconv2(_gelu(self.pwconv1(self.norm(self.dwconv(x)))))
    return x + self.gamma[...] * y


class ViT(nnx.Module):
  """The reference's ViTEncoder (in_channels -> width tokens) or ViTDecoder
  (width tokens -> out_channels pixels), channels last."""

  def __init__(self, arch: Mapping[str, Any], *, in_channels: int = 0, out_channels: int = 0,
               post_mlp: bool, out_conv: bool = False, rngs: nnx.Rngs):
    w, p, g = arch["width"], arch["patch"], arch["grid"]
    self.patch = p
    self.proj = _linear(p * p * in_channels, w, rngs) if in_channels else None
    self.pos_emb = nnx.Param(0.02 * jax.random.normal(rngs.params(), (g, g, w)))
    self.blocks = nnx.List([Block(w, arch["heads"], rngs=rngs) for _ in range(arch["depth"])])
    self.post_mlp = PostMLP(w, rngs=rngs) if post_mlp else None
    self.out_proj = _linear(w, out_channels * p * p, rngs) if out_channels else None
    self.out_conv = (nnx.List([ConvNeXtBlock(out_channels, rngs=rngs) for _ in range(2)])
                     if out_conv else None)

  def __call__(self, x):
    """Encoder: (B, H, W, C) -> (B, H/p, W/p, width); decoder: (B, h, w, width) -> pixels."""
    p = self.patch
    if self.proj is not None:
      if x.shape[1] % p or x.shape[2] % p:
        raise ValueError(f"image size {x.shape[1:3]} is not a multiple of the patch size {p}.")
      x = self.proj(einops.rearrange(x, "b (h p) (w q) c -> b h w (p q c)", p=p, q=p))
    b, h, w, d = x.shape
    x = x + resize_positions(self.pos_emb[...], (h, w))
    x = x.reshape(b, h * w, d)
    for block in self.blocks:
      x = block(x)
    if self.post_mlp is not None:
      x = self.post_mlp(x)
    x = x.reshape(b, h, w, d)
    if self.out_proj is None:
      return x
    x = einops.rearrange(self.out_proj(x), "b h w (c p q) -> b (h p) (w q) c", p=p, q=p)
    for block in self.out_conv or ():
      x = block(x)
    return x


class BottleneckMLP(nnx.Module):
  """The reference's BottleneckMLP, per position: in, (x += W2 GELU(W1 LN x)) x depth, out."""

  def __init__(self, arch: Mapping[str, Any], din: int, dout: int, *, rngs: nnx.Rngs):
    w, wide = arch["width"], arch["wide"]
    self.linear_in = _linear(din, w, rngs)
    self.norms = nnx.List([_norm(w, MLP_EPS, rngs) for _ in range(arch["depth"])])
    self.fc1 = nnx.List([_linear(w, wide, rngs) for _ in range(arch["depth"])])
    self.fc2 = nnx.List([_linear(wide, w, rngs) for _ in range(arch["depth"])])
    self.linear_out = _linear(w, dout, rngs)

  def __call__(self, x):
    x = self.linear_in(x)
    for norm, fc1, fc2 in zip(self.norms, self.fc1, self.fc2):
      x = x + fc2(_gelu(fc1(norm(x))))
    return self.linear_out(x)


class CosineQuantizer(nnx.Module):
  """`lucid` with l2-normalised codes: nearest code by cosine similarity."""

  def __init__(self, size: int, dim: int, *, rngs: nnx.Rngs):
    self.codebook = nnx.Param(l2_normalize(jax.random.normal(rngs.params(), (size, dim))))

  def lookup(self, idx):  # (..., 1) -> (..., dim)
    return jnp.take(self.codebook[...], idx[..., 0], axis=0)

  def __call__(self, z):
    sim = jnp.einsum("...d,kd->...k", l2_normalize(z), l2_normalize(self.codebook[...]))
    idx = jnp.argmax(sim, axis=-1).astype(jnp.int32)[..., None]
    return self.lookup(idx), idx


class Memcodes(nnx.Module):
  """`memcodes`: per head, attention-argmax over the codes' keys, output their values."""

  def __init__(self, size: int, dim: int, heads: int, *, rngs: nnx.Rngs):
    d = dim // heads
    self.heads = heads
    self.codes = nnx.Param(jax.random.normal(rngs.params(), (heads, size, d)))
    self.to_k = nnx.Param(jax.random.normal(rngs.params(), (heads, d, d)) * d ** -0.5)
    self.to_v = nnx.Param(jax.random.normal(rngs.params(), (heads, d, d)) * d ** -0.5)

  def _project(self, w):
    return jnp.einsum("hnd,hdc->hnc", self.codes[...], w[...])

  def lookup(self, idx):  # (..., heads) -> (..., heads * d)
    out = self._project(self.to_v)[jnp.arange(self.heads), idx]  # (..., heads, d)
    return out.reshape(*idx.shape[:-1], -1)

  def __call__(self, z):
    q = z.reshape(*z.shape[:-1], self.heads, -1)
    q = q * q.shape[-1] ** -0.5
    logits = jnp.einsum("...hd,hkd->...hk", q, self._project(self.to_k))
    idx = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return self.lookup(idx), idx


def make_quantizer(cfg, rngs: nnx.Rngs) -> nnx.Module:
  """The quantizer `cfg` (a VQ-VAE's or a DiVAE's config) names."""
  if cfg.quant_type == "lucid":
    return CosineQuantizer(cfg.codebook_size, cfg.latent_dim, rngs=rngs)
  return Memcodes(cfg.codebook_size, cfg.latent_dim, cfg.num_codebooks, rngs=rngs)


def tokens_from_indices(idx: jax.Array) -> jax.Array:
  """A quantizer's (B, h, w, n) indices -> the reference's token layout."""
  return idx[..., 0] if idx.shape[-1] == 1 else jnp.moveaxis(idx, -1, 1)


def indices_from_tokens(tokens: jax.Array) -> jax.Array:
  """The reference's token layout -> a quantizer's (B, h, w, n) indices."""
  return tokens[..., None] if tokens.ndim == 3 else jnp.moveaxis(tokens, 1, -1)


class Encoded(NamedTuple):
  tokens: jax.Array  # int32 (B, h, w), or (B, n_codebooks, h, w).
  codes: jax.Array  # (B, h, w, latent_dim): the quantizer's output.
  latents: jax.Array  # (B, h, w, latent_dim): its input.


class ReleasedVQVAE(nnx.Module):
  """A reference VQVAE (encoder, quantizer, decoder), eval-time, channels last."""

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    cfg = cfg.validate()
    self.cfg = cfg
    enc, dec = cfg.encoder_arch(), cfg.decoder_arch()
    self.cls_emb = (nnx.Param(jax.random.normal(rngs.params(), (cfg.n_labels, cfg.n_channels)))
                    if cfg.n_labels else None)
    if enc["kind"] == "vit":
      self.encoder = ViT(enc, in_channels=cfg.n_channels, post_mlp=cfg.post_mlp, rngs=rngs)
    else:
      self.encoder = BottleneckMLP(enc, cfg.n_channels, enc["width"], rngs=rngs)
    self.quant_proj = _linear(enc["width"], cfg.latent_dim, rngs)
    self.quantizer = make_quantizer(cfg, rngs)
    self.post_quant_proj = _linear(cfg.latent_dim, dec["width"], rngs)
    if dec["kind"] == "vit":
      self.decoder = ViT(dec, out_channels=cfg.out_channels, post_mlp=cfg.post_mlp,
                         out_conv=cfg.out_conv, rngs=rngs)
    else:
      self.decoder = BottleneckMLP(dec, dec["width"], cfg.out_channels, rngs=rngs)

  def encode_latents(self, x) -> jax.Array:
    """4M-unit input -> (B, h, w, latent_dim) quantizer inputs."""
    if self.cls_emb is not None:
      x = jnp.take(self.cls_emb[...], x, axis=0)
    return self.quant_proj(self.encoder(x))

  def quantize(self, latents) -> tuple[jax.Array, jax.Array]:
    """(codes (B, h, w, latent_dim), tokens)."""
    codes, idx = self.quantizer(latents)
    return codes, tokens_from_indices(idx)

  def encode(self, x) -> Encoded:
    latents = self.encode_latents(x)
    codes, tokens = self.quantize(latents)
    return Encoded(tokens, codes, latents)

  def lookup(self, tokens) -> jax.Array:
    """Tokens (the reference's layout) -> codes (B, h, w, latent_dim)."""
    return self.quantizer.lookup(indices_from_tokens(tokens))

  def decode_codes(self, codes) -> jax.Array:
    """Codes -> (B, H, W, out_channels): the reconstruction (semseg: logits)."""
    return self.decoder(self.post_quant_proj(codes))

  def decode(self, tokens) -> jax.Array:
    return self.decode_codes(self.lookup(tokens))
