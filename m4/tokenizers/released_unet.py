"""4M's patched UNet diffusion decoder (the reference's `unet_patched`), eval-time, in NNX.

    arch = unet_arch("unet_patched")
    unet = PatchedUNet(arch, channels=3, cond_channels=32, rngs=nnx.Rngs(0))
    out = unet(x_t, t, codes)    # (B, H, W, 3), scalar or (B,) t, (B, h, w, 32) -> (B, H, W, 3)

What it computes (channels last):

  patching   x_t (B, H, W, C) -> (B, H/p, W/p, C p p), channels ordered (c, py,
             px); the codes are resized to that grid (PyTorch's `nearest`:
             source index floor(i * in / out)) and concatenated after them.
  UNet       the guided-diffusion UNet: a sinusoidal embedding of t (cos then
             sin, max period 10000) -> Linear, SiLU, Linear (4x width); a 3x3
             conv in; per level `res_blocks` ResBlocks (GroupNorm(32, eps 1e-5),
             SiLU, 3x3 conv; + Linear(SiLU(emb)); GroupNorm, SiLU, 3x3 conv;
             + the input, through a 1x1 conv when the width changes), each
             followed by a one-head self-attention block at the listed
             downsampling factors, and a stride-2 3x3 conv between levels; a
             middle ResBlock, attention, ResBlock; then per level `res_blocks`
             + 1 ResBlocks on the skip concatenated after the features, with
             attention as above and a nearest 2x upsample + 3x3 conv ending
             each level but the first; GroupNorm, SiLU, 3x3 conv out.
  attention  q, k, v from one 1x1 projection of the GroupNorm'd input (head
             h's channels [3hC', 3(h+1)C') split in that order), softmax(q k^T /
             sqrt(C')), a 1x1 output projection, added to the input.
  unpatching the output (B, H/p, W/p, C p p) -> (B, H, W, C).

Sizes: `unet_patched` (patch 4, width 256, 3 ResBlocks a level, widths x(1, 2,
2, 2), attention at factors 4 and 8: every released DiVAE's) or, for test
fixtures, `unet_p<patch>_c<width>_r<res_blocks>_m<mult>-<mult>..._a<factor>-...`
(`_a` may be empty: `_a`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

GN_EPS = 1e-5
GN_GROUPS = 32
PRESETS = {"unet_patched": dict(patch=4, width=256, res_blocks=3, mult=(1, 2, 2, 2),
                                attention=(4, 8))}


def unet_arch(name: str) -> dict[str, Any]:
  """The sizes a decoder name stands for: {patch, width, res_blocks, mult, attention}."""
  if name in PRESETS:
    arch = dict(PRESETS[name])
  else:
    m = re.fullmatch(r"unet_p(\d+)_c(\d+)_r(\d+)_m(\d+(?:-\d+)*)_a((?:\d+(?:-\d+)*)?)", name)
    if not m:
      raise ValueError(f"dec_type {name!r} is not a DiVAE decoder m4 knows: unet_patched, or"
                       " unet_p<patch>_c<width>_r<res_blocks>_m<mult>-..._a<factor>-... (the"
                       " reference's UViT decoders are not converted).")
    p, c, r, mult, att = m.groups()
    arch = dict(patch=int(p), width=int(c), res_blocks=int(r),
                mult=tuple(int(v) for v in mult.split("-")),
                attention=tuple(int(v) for v in att.split("-")) if att else ())
  for w in arch["mult"]:
    if (w * arch["width"]) % GN_GROUPS:
      raise ValueError(f"dec_type {name!r}: width {w * arch['width']} is not a multiple of the"
                       f" {GN_GROUPS} GroupNorm groups.")
  return arch


def layout(arch: Mapping[str, Any], cin: int, cout: int) -> dict[str, list]:
  """The reference's blocks as lists of layers: ("conv", cin, cout), ("res", cin,
  cout), ("attn", c), ("down", c), ("up", c); plus the output's width."""
  width, mult, att = arch["width"], arch["mult"], set(arch["attention"])
  ch = first = mult[0] * width
  inputs, chans, ds = [[("conv", cin, ch)]], [ch], 1
  for level, m in enumerate(mult):
    for _ in range(arch["res_blocks"]):
      layers = [("res", ch, m * width)]
      ch = m * width
      if ds in att:
        layers.append(("attn", ch))
      inputs.append(layers)
      chans.append(ch)
    if level != len(mult) - 1:
      inputs.append([("down", ch)])
      chans.append(ch)
      ds *= 2
  middle = [("res", ch, ch), ("attn", ch), ("res", ch, ch)]
  outputs = []
  for level, m in reversed(list(enumerate(mult))):
    for i in range(arch["res_blocks"] + 1):
      layers = [("res", ch + chans.pop(), m * width)]
      ch = m * width
      if ds in att:
        layers.append(("attn", ch))
      if level and i == arch["res_blocks"]:
        layers.append(("up", ch))
        ds //= 2
      outputs.append(layers)
  return {"input_blocks": inputs, "middle_block": middle, "output_blocks": outputs,
          "out": [("norm", ch), ("conv", first, cout)]}


def _conv(cin, cout, rngs, k=3, stride=1):
  pad = k // 2
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)), rngs=rngs)


def _gn(c, rngs):
  return nnx.GroupNorm(c, num_groups=GN_GROUPS, epsilon=GN_EPS, use_fast_variance=False,
                       rngs=rngs)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """(N,) timesteps -> (N, dim): cos then sin of t * max_period ** (-i / half)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class ResBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, emb: int, *, rngs: nnx.Rngs):
    self.norm_in = _gn(cin, rngs)
    self.conv_in = _conv(cin, cout, rngs)
    self.emb = nnx.Linear(emb, cout, rngs=rngs)
    self.norm_out = _gn(cout, rngs)
    self.conv_out = _conv(cout, cout, rngs)
    self.skip = _conv(cin, cout, rngs, k=1) if cin != cout else None

  def __call__(self, x, emb):  # (B, H, W, C), (B or 1, E)
    h = self.conv_in(jax.nn.silu(self.norm_in(x)))
    h = h + self.emb(jax.nn.silu(emb))[:, None, None, :]
    h = self.conv_out(jax.nn.silu(self.norm_out(h)))
    return (x if self.skip is None else self.skip(x)) + h


class Attention(nnx.Module):
  def __init__(self, c: int, *, heads: int = 1, rngs: nnx.Rngs):
    self.heads = heads
    self.norm = _gn(c, rngs)
    self.qkv = nnx.Linear(c, 3 * c, rngs=rngs)
    self.proj = nnx.Linear(c, c, rngs=rngs)

  def __call__(self, x):
    b, hgt, wid, c = x.shape
    qkv = self.qkv(self.norm(x)).reshape(b, hgt * wid, self.heads, 3, c // self.heads)
    q, k, v = (qkv[:, :, :, i] for i in range(3))  # (B, T, heads, C')
    scale = (c // self.heads) ** -0.25
    w = jax.nn.softmax(jnp.einsum("bthc,bshc->bhts", q * scale, k * scale), axis=-1)
    y = jnp.einsum("bhts,bshc->bthc", w, v).reshape(b, hgt, wid, c)
    return x + self.proj(y)


class Down(nnx.Module):
  def __init__(self, c: int, *, rngs: nnx.Rngs):
    self.conv = _conv(c, c, rngs, stride=2)

  def __call__(self, x):
    return self.conv(x)


class Up(nnx.Module):
  def __init__(self, c: int, *, rngs: nnx.Rngs):
    self.conv = _conv(c, c, rngs)

  def __call__(self, x):
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


def _layer(spec, emb: int, rngs: nnx.Rngs):
  kind, *sizes = spec
  if kind == "conv":
    return _conv(*sizes, rngs)
  if kind == "norm":
    return _gn(*sizes, rngs)
  if kind == "res":
    return ResBlock(*sizes, emb, rngs=rngs)
  return {"attn": Attention, "down": Down, "up": Up}[kind](*sizes, rngs=rngs)


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(B, h, w, C) -> (B, *size, C), as torch.nn.functional.interpolate(mode="nearest")."""
  idx = [np.minimum(np.floor(np.arange(o) * np.float32(i / o)).astype(np.int64), i - 1)
         for i, o in zip(x.shape[1:3], size)]
  return x[:, idx[0]][:, :, idx[1]]


class PatchedUNet(nnx.Module):
  """The reference's PatchedUNetCondCat: patches + resized codes -> UNet -> patches."""

  def __init__(self, arch: Mapping[str, Any], channels: int, cond_channels: int, *,
               rngs: nnx.Rngs):
    p = self.patch = arch["patch"]
    self.width = arch["width"]
    emb = 4 * self.width
    plan = layout(arch, channels * p * p + cond_channels, channels * p * p)
    self.time_in = nnx.Linear(self.width, emb, rngs=rngs)
    self.time_out = nnx.Linear(emb, emb, rngs=rngs)
    build = lambda blocks: nnx.List([nnx.List([_layer(s, emb, rngs) for s in b]) for b in blocks])
    self.input_blocks = build(plan["input_blocks"])
    self.middle_block = nnx.List([_layer(s, emb, rngs) for s in plan["middle_block"]])
    self.output_blocks = build(plan["output_blocks"])
    self.out_norm = _layer(plan["out"][0], emb, rngs)
    self.out_conv = _layer(plan["out"][1], emb, rngs)

  def _run(self, layers, h, emb):
    for layer in layers:
      h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
    return h

  def __call__(self, x, t, cond):
    """x (B, H, W, C), t scalar or (B,), cond (B, h, w, D) -> (B, H, W, C)."""
    p = self.patch
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f"image size {x.shape[1:3]} is not a multiple of the decoder's patch"
                       f" size {p}.")
    h = einops.rearrange(x, "b (h p) (w q) c -> b h w (c p q)", p=p, q=p)
    h = jnp.concatenate([h, resize_nearest(cond, h.shape[1:3]).astype(h.dtype)], axis=-1)
    t = jnp.atleast_1d(jnp.asarray(t))
    emb = self.time_out(jax.nn.silu(self.time_in(timestep_embedding(t, self.width))))
    skips = []
    for block in self.input_blocks:
      h = self._run(block, h, emb)
      skips.append(h)
    h = self._run(self.middle_block, h, emb)
    for block in self.output_blocks:
      h = self._run(block, jnp.concatenate([h, skips.pop()], axis=-1), emb)
    h = self.out_conv(jax.nn.silu(self.out_norm(h)))
    return einops.rearrange(h, "b h w (c p q) -> b (h p) (w q) c", p=p, q=p)
