"""What the transfer tests share: a tiny 4M on 32 px scenes read as raw-pixel patches."""

import runpy

import jax
from flax import nnx

from m4 import modalities
from m4.models import configs
from m4.models import transfer
from tests.conftest import REPO

# 32 px scenes read as 8 px patches: a 4x4 grid of raw-pixel tokens.
PIXELS = "rgb_pixels@32test"
PIXELS_SPEC = dict(kind="pixels", vocab_size=0, num_tokens=16, grid=(4, 4), roles=("input",),
                   tokenizer=None, data_key="rgb")
SCENES = dict(resolution=32, min_objects=1, max_objects=3, seed=3, antialias=1, num_train=120,
              num_validation=4, num_test=32)


def tiny_transfer_config():
  """configs/transfer/scenes.py:tiny, every field the job reads."""
  return runpy.run_path(f"{REPO}/configs/transfer/scenes.py")["get_config"]("tiny")


def rngs(seed):
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))  # Compiles fast on CPU.


def tiny_cfg(**kw):
  """A 3-block, width-32 FourMConfig reading PIXELS and rgb tokens."""
  modalities.register_from_config({PIXELS: PIXELS_SPEC})
  return configs.FourMConfig(**{**dict(
      encoder_modalities=(PIXELS, "rgb"), decoder_modalities=("rgb",), dim=32,
      encoder_depth=3, decoder_depth=1, num_heads=2, patch_size=8), **kw})


def tiny_task(kind="segmentation", **kw):
  spec = {"segmentation": dict(kind="segmentation", inputs=(PIXELS,), target="semseg",
                               num_classes=6),
          "classification": dict(kind="classification", inputs=(PIXELS,), target="labels/count",
                                 num_classes=4)}[kind]
  return transfer.TaskSpec.from_config(kind, {**spec, **kw})
