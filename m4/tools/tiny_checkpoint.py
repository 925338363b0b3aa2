"""A tiny, randomly initialised 4M run and VQ tokenizers, for tests and demos.

    python -m m4.tools.tiny_checkpoint --out /tmp/tiny
    # /tmp/tiny/pretrain      config.json + checkpoints/ (state["model"]), as a
    #                         pretraining workdir holds them
    # /tmp/tiny/tokenizers/vq_rgb, vq_depth, vq_semseg   VQ tokenizers (load
    #     by name with M4_TOKENIZERS=/tmp/tiny/tokenizers)

Nothing here is trained: it exercises the loading, generation and drawing
code (tests, the notebook) in seconds; the figures it gives are chance. The
parameters are drawn in numpy (norm scales 1, biases 0, unit-norm codebooks,
other arrays normal with std 1 / sqrt(fan-in)) rather than by the models'
initialisers, which would compile one random-number program per parameter
shape (seconds each on a busy CPU). Existing directories are never
overwritten.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import jax
import numpy as np
from flax import nnx

from m4 import modalities
from m4.data import scenes
from m4.models import configs
from m4.models import pretrained
from m4.models.fourm import FourM
from m4.tokenizers import modality_io
from m4.tokenizers import vq_tokenizer

NAMES = ("rgb", "depth", "semseg", "caption")
INPUTS = ("rgb_pixels",) + NAMES  # RGB pixels in, as the scenes pretraining reads them.
TINY_MODEL = dict(dim=32, num_heads=2, encoder_depth=1, decoder_depth=1,
                  num_encoder_tokens=64, num_decoder_tokens=64, patch_size=8)
TINY_VQ = dict(channels=(16, 32), num_res_blocks=1, code_dim=8, patch=4)


def numpy_init(make, seed: int, fan_in):
  """The module `make()` builds, with every array drawn in numpy (module doc)."""
  abstract = nnx.eval_shape(make)
  state = nnx.state(abstract)
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = str(getattr(path[-1], "key", path[-1]))
    if not np.issubdtype(x.dtype, np.floating):
      raise TypeError(f"tiny_checkpoint: cannot draw {name} of dtype {x.dtype}.")
    if name.endswith("scale"):
      return np.ones(x.shape, x.dtype)
    if name.endswith("bias") or name.startswith("ema_"):
      return np.zeros(x.shape, x.dtype)
    value = rng.standard_normal(x.shape)
    if name == "codebook":
      return (value / np.linalg.norm(value, axis=-1, keepdims=True)).astype(x.dtype)
    return (value / math.sqrt(fan_in(x.shape))).astype(x.dtype)

  pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(abstract, state)
  return abstract


def tiny_model(seed: int = 0, names=NAMES, inputs=INPUTS, **overrides) -> FourM:
  """A random FourM (TINY_MODEL sizes) reading `inputs`, predicting `names`."""
  cfg = configs.preset("tiny", encoder_modalities=tuple(inputs), decoder_modalities=tuple(names),
                       **{**TINY_MODEL, **overrides})
  return numpy_init(lambda: FourM(cfg, rngs=nnx.Rngs(seed)), seed, lambda _: cfg.dim)


def tiny_tokenizer(name: str, seed: int = 0, image_size=(64, 64)):
  """An untrained VQ tokenizer of registered image modality `name`."""
  io = {"loss_weights": {}}
  if modalities.get(name).data_key == "semseg":
    io["num_classes"] = len(scenes.CLASSES)
  spec = vq_tokenizer.TokenizerSpec(modality=modalities.get(name).to_dict(),
                                    image_size=tuple(image_size), model=dict(TINY_VQ), io=io)
  model = numpy_init(lambda: vq_tokenizer.build(spec, nnx.Rngs(seed))[0], seed,
                      lambda shape: math.prod(shape[:-1]))
  return vq_tokenizer.VQTokenizer(model, modality_io.make(name, **io), spec)


def write(out: str, seed: int = 0) -> dict[str, str]:
  """Writes the run and tokenizers under `out`; returns their directories."""
  paths = {"pretrain": os.path.join(out, "pretrain"), "tokenizers": os.path.join(out, "tokenizers")}
  for name in ("rgb", "depth", "semseg"):
    paths[name] = os.path.join(paths["tokenizers"], modalities.get(name).tokenizer)
  for path in paths.values():
    if os.path.exists(path):
      raise FileExistsError(f"{path} already exists; not overwriting it.")
  pretrained.save(paths["pretrain"], tiny_model(seed), extra={"source": "m4.tools.tiny_checkpoint"})
  for i, name in enumerate(("rgb", "depth", "semseg")):
    tiny_tokenizer(name, seed + i).save(paths[name])
  return paths


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m m4.tools.tiny_checkpoint", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="directory to write into")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  try:
    paths = write(args.out, args.seed)
  except FileExistsError as e:
    print(f"m4.tools.tiny_checkpoint: error: {e}", file=sys.stderr)
    return 2
  for k, v in paths.items():
    print(f"{k}: {v}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
