"""A convolutional VQ-VAE: image -> grid of code ids -> image.

    model = VQVAE(in_channels=3, out_channels=3, vocab_size=1024,
                  downsample=8, rngs=nnx.Rngs(0))
    out = model(x)              # x: (B, H, W, in_channels), normalised values
    out.output                  # (B, H, W, out_channels) reconstruction
    out.quantizer.indices       # int32 (B, H/8, W/8) tokens
    model.decode_indices(ids)   # tokens -> (B, H, W, out_channels)

The model is modality-agnostic: `m4.tokenizers.modality_io` turns raw
images into its inputs and its outputs into losses and raw images. The encoder
optionally starts with a space-to-depth `patch` (cheap on CPU), then halves the
resolution `len(channels) - 1` times; the decoder mirrors it with nearest
upsampling and ends with depth-to-space. `downsample = patch * 2**(len(channels)-1)`
must equal image size / token grid size (the grid comes from the modality
registry).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from m4.tokenizers import quantizer as quantizer_lib


def _groups(channels: int, max_groups: int = 8) -> int:
  return math.gcd(channels, max_groups)


class ResBlock(nnx.Module):
  """Pre-activation residual block: (GroupNorm, SiLU, 3x3 conv) x 2 + skip."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.GroupNorm(cin, num_groups=_groups(cin), rngs=rngs)
    self.conv1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
    self.norm2 = nnx.GroupNorm(cout, num_groups=_groups(cout), rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), rngs=rngs,
                          kernel_init=nnx.initializers.variance_scaling(0.1, "fan_in", "normal"))
    self.skip = nnx.Conv(cin, cout, (1, 1), rngs=rngs) if cin != cout else None

  def __call__(self, x):
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return h + (self.skip(x) if self.skip is not None else x)


class Encoder(nnx.Module):

  def __init__(self, in_channels: int, channels: Sequence[int], num_res_blocks: int,
               code_dim: int, patch: int, *, rngs: nnx.Rngs):
    self.patch = patch
    self.stem = nnx.Conv(in_channels * patch * patch, channels[0], (3, 3), rngs=rngs)
    self.levels = nnx.List()
    for i, c in enumerate(channels):
      blocks = nnx.List([ResBlock(c, c, rngs=rngs) for _ in range(num_res_blocks)])
      down = (nnx.Conv(c, channels[i + 1], (3, 3), strides=2, rngs=rngs)
              if i + 1 < len(channels) else None)
      self.levels.append(nnx.Dict(blocks=blocks, down=down))
    self.norm = nnx.GroupNorm(channels[-1], num_groups=_groups(channels[-1]), rngs=rngs)
    self.proj = nnx.Conv(channels[-1], code_dim, (1, 1), rngs=rngs)

  def __call__(self, x):
    if self.patch > 1:
      x = einops.rearrange(x, "b (h p) (w q) c -> b h w (p q c)", p=self.patch, q=self.patch)
    h = self.stem(x)
    for level in self.levels:
      for block in level["blocks"]:
        h = block(h)
      if level["down"] is not None:
        h = level["down"](h)
    return self.proj(jax.nn.silu(self.norm(h)))


class Decoder(nnx.Module):

  def __init__(self, out_channels: int, channels: Sequence[int], num_res_blocks: int,
               code_dim: int, patch: int, *, rngs: nnx.Rngs):
    self.patch = patch
    channels = list(channels)[::-1]  # Coarse to fine.
    self.stem = nnx.Conv(code_dim, channels[0], (3, 3), rngs=rngs)
    self.levels = nnx.List()
    for i, c in enumerate(channels):
      blocks = nnx.List([ResBlock(c, c, rngs=rngs) for _ in range(num_res_blocks + 1)])
      up = (nnx.Conv(c, channels[i + 1], (3, 3), rngs=rngs)
            if i + 1 < len(channels) else None)
      self.levels.append(nnx.Dict(blocks=blocks, up=up))
    self.norm = nnx.GroupNorm(channels[-1], num_groups=_groups(channels[-1]), rngs=rngs)
    self.out = nnx.Conv(channels[-1], out_channels * patch * patch, (3, 3), rngs=rngs)

  def __call__(self, z):
    h = self.stem(z)
    for level in self.levels:
      for block in level["blocks"]:
        h = block(h)
      if level["up"] is not None:
        h = level["up"](jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))
    y = self.out(jax.nn.silu(self.norm(h)))
    if self.patch > 1:
      y = einops.rearrange(y, "b h w (p q c) -> b (h p) (w q) c", p=self.patch, q=self.patch)
    return y


class VQVAEOutput(NamedTuple):
  output: jax.Array  # (B, H, W, out_channels)
  quantizer: quantizer_lib.QuantizerOutput


class VQVAE(nnx.Module):
  """Encoder -> cosine EMA vector quantizer -> decoder."""

  def __init__(self, *, in_channels: int, out_channels: int, vocab_size: int,
               downsample: int, channels: Sequence[int] = (64, 128, 256),
               num_res_blocks: int = 1, code_dim: int = 32, patch: int | None = 0,
               ema_decay: float = 0.99, dead_threshold: float = 0.03,
               restart_noise: float = 0.01, rngs: nnx.Rngs):
    channels = tuple(int(c) for c in channels)
    if not patch:  # 0 (or None): whatever the levels do not downsample, the patch does.
      patch = downsample // 2 ** (len(channels) - 1)
    if patch < 1 or patch * 2 ** (len(channels) - 1) != downsample:
      raise ValueError(
          f"VQVAE: patch {patch} x 2**(len(channels)-1) = {patch * 2 ** (len(channels) - 1)}"
          f" must equal the downsampling factor {downsample} (image size / token grid);"
          f" channels={channels}")
    self.downsample = downsample
    self.encoder = Encoder(in_channels, channels, num_res_blocks, code_dim, patch, rngs=rngs)
    self.quantizer = quantizer_lib.VectorQuantizer(
        vocab_size, code_dim, decay=ema_decay, dead_threshold=dead_threshold,
        restart_noise=restart_noise, rngs=rngs)
    self.decoder = Decoder(out_channels, channels, num_res_blocks, code_dim, patch, rngs=rngs)

  def encode(self, x: jax.Array) -> quantizer_lib.QuantizerOutput:
    return self.quantizer(self.encoder(x))

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    return self.decoder(codes)

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    return self.decoder(self.quantizer.lookup(indices))

  def __call__(self, x: jax.Array) -> VQVAEOutput:
    q = self.encode(x)
    return VQVAEOutput(self.decode_codes(q.quantized), q)
