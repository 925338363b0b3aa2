"""The released 4M DiVAE tokenizers (apple/ml-4m `DiVAE`), eval-time, in NNX.

    model, _ = released_convert.convert("4M_tokenizers_rgb_16k_224-448")
    enc = model.encode(x)                          # (B, H, W, C) in 4M's units
    img = model.decode(enc.tokens, noise, steps=25)  # noise: x_T, (B, H, W, C)

The encoder and quantizer are the VQ-VAE's (released_vqvae: ViT, tanh
post-MLP, quant_proj, lucid or memcodes). The decoder is a patched UNet
(released_unet) conditioned on the codes, sampled from the given noise with
DDIM at eta 0 (released_ddim): what the reference's `decode_tokens` computes
with a DDIMScheduler. m4 does not implement the reference's DDPM (ancestral)
sampling, which its default pipeline uses when the config's `scheduler` is
"ddpm", nor its UViT decoders or classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
from flax import nnx

from m4.tokenizers import released_ddim
from m4.tokenizers.released_unet import PatchedUNet, unet_arch
from m4.tokenizers import released_vqvae as vqvae
from m4.tokenizers.released_vqvae import Encoded, ViT, _arch


@dataclasses.dataclass(frozen=True)
class DiVAEConfig:
  """A reference DiVAE's eval-time arguments, under its names and defaults."""

  enc_type: str = "vit_b_enc"
  dec_type: str = "unet_patched"
  n_channels: int = 3
  image_size: int = 224
  image_size_enc: int | None = None
  image_size_dec: int | None = None
  patch_size: int = 16
  patch_proj: bool = True
  post_mlp: bool = False
  quant_type: str = "lucid"
  codebook_size: int = 16384
  num_codebooks: int = 1
  latent_dim: int = 32
  num_train_timesteps: int = 1000
  scheduler: str = "ddpm"
  beta_schedule: str = "squaredcos_cap_v2"
  prediction_type: str = "v_prediction"
  clip_sample: bool = False
  thresholding: bool = True
  zero_terminal_snr: bool = True

  n_labels = None  # No released DiVAE reads class ids.
  out_channels = property(lambda self: self.n_channels)

  def encoder_arch(self) -> dict[str, Any]:
    arch = _arch(self.enc_type, "enc", self.patch_size, self.image_size_enc or self.image_size,
                 self.patch_proj)
    if arch["kind"] != "vit":
      raise ValueError(f"enc_type {self.enc_type!r}: DiVAE encoders are ViTs.")
    return arch

  def decoder_arch(self) -> dict[str, Any]:
    return unet_arch(self.dec_type)

  def schedule(self) -> released_ddim.Schedule:
    return released_ddim.Schedule(self.num_train_timesteps, self.beta_schedule,
                                  self.prediction_type, self.thresholding or self.clip_sample,
                                  self.zero_terminal_snr)

  def validate(self) -> "DiVAEConfig":
    """Raises ValueError naming the field this module cannot compute."""
    self.encoder_arch()
    self.decoder_arch()
    self.schedule().validate()
    vqvae.check_quantizer(self)
    if self.scheduler not in ("ddpm", "ddim"):
      raise ValueError(f"scheduler {self.scheduler!r} is not 'ddpm' or 'ddim'.")
    return self

  def to_json(self) -> dict:
    return {"family": "divae", **dataclasses.asdict(self)}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "DiVAEConfig":
    return vqvae.config_from_json(cls, {k: v for k, v in d.items() if k != "family"})


class ReleasedDiVAE(nnx.Module):
  """A reference DiVAE (ViT encoder, quantizer, patched UNet), eval-time, channels last."""

  def __init__(self, cfg: DiVAEConfig, *, rngs: nnx.Rngs):
    cfg = cfg.validate()
    self.cfg = cfg
    enc = cfg.encoder_arch()
    self.encoder = ViT(enc, in_channels=cfg.n_channels, post_mlp=cfg.post_mlp, rngs=rngs)
    self.quant_proj = nnx.Linear(enc["width"], cfg.latent_dim, rngs=rngs)
    self.quantizer = vqvae.make_quantizer(cfg, rngs)
    self.decoder = PatchedUNet(cfg.decoder_arch(), cfg.n_channels, cfg.latent_dim, rngs=rngs)

  def encode(self, x) -> Encoded:
    """(B, H, W, C) in 4M's units -> tokens (B, h, w), codes, latents."""
    latents = self.quant_proj(self.encoder(x))
    codes, idx = self.quantizer(latents)
    return Encoded(vqvae.tokens_from_indices(idx), codes, latents)

  def lookup(self, tokens) -> jax.Array:
    return self.quantizer.lookup(vqvae.indices_from_tokens(tokens))

  def denoise(self, x, t, codes) -> jax.Array:
    """The UNet's output (x0, noise or v, per `prediction_type`) at timestep t."""
    return self.decoder(x, t, codes)

  def decode_codes(self, codes, noise, steps: int, mode: str = "trailing") -> jax.Array:
    """DDIM from `noise` (x_T, (B, H, W, C)) conditioned on codes -> (B, H, W, C)."""
    return released_ddim.sample(lambda x, t: self.decoder(x, t, codes), noise,
                                self.cfg.schedule(), steps, mode)

  def decode(self, tokens, noise, steps: int, mode: str = "trailing") -> jax.Array:
    return self.decode_codes(self.lookup(tokens), noise, steps, mode)
