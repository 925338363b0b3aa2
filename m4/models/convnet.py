"""A small supervised convolutional network: the transfer tables' reference.

    model = ConvNet(task, image_size=(64, 64), width=32, rngs=nnx.Rngs(0))
    out = model(batch, train=True)     # batch: m4.models.transfer.EncoderInputs output

A U-Net on the raw pixels of the task's `pixels` inputs (channels
concatenated): optionally a space-to-depth `stem` (s x s pixels per position,
which makes every level s^2 times cheaper), then per level two 3x3
convolutions with BatchNorm and GELU, 2x2 average pooling down to 1/8 of the
stem's grid, then (dense tasks) bilinear upsampling with skip connections
back to the stem's grid and a 1x1 convolution to s x s pixels' outputs per
position (depth-to-space); (classification) global average pooling of the
deepest level and a linear layer. Trained from scratch on the same labels as
the transfer arms, it shows what these labels allow a model built for
images, beside what pretraining buys a transformer.
"""

from __future__ import annotations

from typing import Sequence

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from m4 import modalities
from m4.workdir import require

LEVELS = 4  # Resolutions 1, 1/2, 1/4, 1/8.


class _ConvBlock(nnx.Module):
  """Two (3x3 convolution, BatchNorm, GELU)."""

  def __init__(self, cin: int, cout: int, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(cin, cout, (3, 3), use_bias=False, rngs=rngs)
    self.norm1 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
    self.norm2 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)

  def __call__(self, x, train: bool):
    x = jax.nn.gelu(self.norm1(self.conv1(x), use_running_average=not train))
    return jax.nn.gelu(self.norm2(self.conv2(x), use_running_average=not train))


class ConvNet(nnx.Module):
  """U-Net (dense tasks) or conv classifier (module docstring)."""

  def __init__(self, task, *, image_size: Sequence[int], width: int = 32, stem: int = 1,
               rngs: nnx.Rngs):
    self.task = task
    self.stem = int(stem)
    self.inputs = tuple(task.inputs)
    for n in self.inputs:
      require(modalities.get(n).kind == modalities.PIXELS, f"tasks.{task.name}.inputs",
              f"the conv net reads raw pixels; {n!r} is a {modalities.get(n).kind} modality.")
    size = tuple(int(s) for s in image_size)
    require(self.stem >= 1, "supervised.stem", f"must be >= 1, got {stem}.")
    factor = self.stem * 2 ** (LEVELS - 1)
    require(size[0] % factor == 0 and size[1] % factor == 0, "data.image_size",
            f"{size} must divide by {factor} for the conv net (stem {self.stem}).")
    channels = 3 * len(self.inputs) * self.stem ** 2
    widths = [width * 2 ** min(i, 2) for i in range(LEVELS)]  # 32, 64, 128, 128
    self.down = nnx.List([_ConvBlock(channels if i == 0 else widths[i - 1], widths[i], rngs)
                          for i in range(LEVELS)])
    dense = task.kind != "classification"
    if dense:
      self.up = nnx.List([_ConvBlock(widths[i + 1] + widths[i], widths[i], rngs)
                          for i in range(LEVELS - 1)])
      out = task.out_channels
      self.head = nnx.Conv(widths[0], out * self.stem ** 2, (1, 1),
                           kernel_init=nnx.initializers.zeros, rngs=rngs)
    else:
      self.up = None
      self.head = nnx.Linear(widths[-1], task.num_classes, kernel_init=nnx.initializers.zeros,
                             rngs=rngs)

  def decay_rules(self) -> tuple[tuple[str, bool], ...]:
    """Weight decay on the convolution and linear kernels (`m4.optim` rules)."""
    return (("(.*/)?kernel", True),)

  def __call__(self, batch, *, frozen: bool = False, train: bool = False) -> jax.Array:
    """Logits (B, C) or (B, H, W, C), or log-depth / depth-bin scores, as TransferModel."""
    del frozen  # Nothing is pretrained: every parameter always trains.
    x = jnp.concatenate([jnp.asarray(batch[n]["tensor"], jnp.float32) for n in self.inputs], -1)
    s = self.stem
    x = einops.rearrange(x, "b (h p) (w q) c -> b h w (p q c)", p=s, q=s)
    skips = []
    for i, block in enumerate(self.down):
      if i:
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))
      x = block(x, train)
      skips.append(x)
    if self.up is None:
      return self.head(x.mean((1, 2)))
    for i in reversed(range(LEVELS - 1)):
      skip = skips[i]
      x = jax.image.resize(x, skip.shape[:3] + (x.shape[-1],), "bilinear")
      x = self.up[i](jnp.concatenate([x, skip], -1), train)
    return einops.rearrange(self.head(x), "b h w (p q c) -> b (h p) (w q) c", p=s, q=s)
