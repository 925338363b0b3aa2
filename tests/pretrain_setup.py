"""Small scenes data and hand-set VQ tokenizers for the pretraining tests.

The tokenizers are not trained (training takes minutes; a jitted random init
alone ~15 s to compile on 2 cores): their weights are set with numpy so that
a token says something about its patch, as a trained tokenizer's would. The
encoder averages each input channel over the 4x4 patch (rgb: the colour;
depth: log-depth and validity; semseg: the class fractions); its
GroupNorm + SiLU, scaled up, keep the channels above their image mean; each
channel has a 2-D direction, and the codebook repeats NUM_BINS directions,
so the token is the angle bin of the patch's above-mean channels (e.g. its
class for semseg). The decoders are random: pictures of decoded
tokens are noise.
"""

import os

import numpy as np
import pytest
from flax import nnx

import m4  # pylint: disable=unused-import
from m4 import modalities
from m4.data import pipeline
from m4.data import scenes
from m4.tokenizers import modality_io
from m4.tokenizers import vq_tokenizer
from m4.jobs import pretokenize

RESOLUTION = 32
TINY_VQ = dict(channels=(8,), num_res_blocks=0, code_dim=2, patch=4)
NUM_BINS = 16


SIZES = dict(num_train=96, num_validation=24, num_test=8)


def data_config(directory, **overrides):
  """config.data of the tests' scenes (made in `directory` on first use)."""
  return pipeline.data_config(**{**dict(
      kind="scenes", dir=directory, resolution=RESOLUTION, max_objects=3, workers=1,
      image_size=(RESOLUTION, RESOLUTION), crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25),
      flip=True, **SIZES), **overrides})


def make_data(directory):
  scenes.ensure(directory, data_config(directory))
  return directory


def _directions(in_channels, channels):
  """Angle of each encoder channel's code direction (-1: unused channel).

  semseg (one channel per class): sky, ground and all objects get three
  directions 120 degrees apart (a token says sky / ground / object, or a mix);
  other modalities: channel c at 2 pi c / in_channels.
  """
  c = np.arange(channels)
  if in_channels == len(scenes.CLASSES):
    angle = 2 * np.pi / 3 * np.minimum(c, 2)
  else:
    angle = 2 * np.pi * c / in_channels
  return np.where(c < in_channels, angle, -1.0)


def _fill(path, shape, rng, in_channels):
  keys = [str(getattr(k, "key", k)) for k in path]
  name = "/".join(keys)
  if name == "encoder/norm/scale":  # silu(30 z) keeps only channels above the image mean.
    return np.full(shape, 30.0, np.float32)
  if keys[-1] in ("scale", "ema_count"):
    return np.ones(shape, np.float32)
  if keys[-1] == "bias":
    return np.zeros(shape, np.float32)
  if keys[-1] in ("codebook", "ema_sum"):
    angle = 2 * np.pi * (np.arange(shape[0]) % NUM_BINS) / NUM_BINS
    return np.stack([np.cos(angle), np.sin(angle)], -1).astype(np.float32)
  if name == "encoder/stem/kernel":  # Patch mean of each input channel.
    kernel = np.zeros(shape, np.float32)
    k = np.arange(shape[2])
    kernel[1, 1, k, k % in_channels] = 1.0 / (shape[2] // in_channels)
    return kernel
  if name == "encoder/proj/kernel":  # Channel c -> a direction (see _directions).
    angle = _directions(in_channels, shape[2])
    kernel = np.stack([np.cos(angle), np.sin(angle)], -1) * (angle >= 0)[:, None]
    return kernel.reshape(shape).astype(np.float32)
  x = rng.standard_normal(shape).astype(np.float32)
  return x / np.sqrt(np.prod(shape[:-1]))


def make_tokenizer(directory, name, seed=0):
  """An untrained VQ tokenizer for `name` saved in `directory` (kept if there)."""
  if os.path.exists(os.path.join(directory, vq_tokenizer.SPEC_FILE)):
    return directory
  io = {"loss_weights": {}}
  if name == "semseg":
    io["num_classes"] = len(scenes.CLASSES)
  spec = vq_tokenizer.TokenizerSpec(modality=modalities.get(name).to_dict(),
                                    image_size=(RESOLUTION, RESOLUTION), model=TINY_VQ, io=io)
  abstract = nnx.eval_shape(lambda: vq_tokenizer.build(spec)[0])
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  import jax  # pylint: disable=g-import-not-at-top
  in_channels = modality_io.make(name, **io).in_channels
  pure = jax.tree_util.tree_map_with_path(lambda p, x: _fill(p, x.shape, rng, in_channels),
                                          nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  model = nnx.merge(graphdef, state)
  tok = vq_tokenizer.VQTokenizer(model, modality_io.make(name, **io), spec)
  return tok.save(directory)


def make_tokenizers(root, seed=0):
  return {n: make_tokenizer(os.path.join(root, f"tok_{n}"), n, seed + i)
          for i, n in enumerate(("rgb", "depth", "semseg"))}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assets(tmp_path_factory):
  """{data, tokenizers} shared by the test modules of one session (made once)."""
  root = tmp_path_factory.getbasetemp() / "pretrain_assets"
  root.mkdir(exist_ok=True)
  return {"data": make_data(str(root / "data")), "tokenizers": make_tokenizers(str(root)),
          "root": str(root)}


def pretokenize_config(assets_, **overrides):
  """configs/pretokenize/scenes.py on the tests' data and tokenizers."""
  import runpy  # pylint: disable=g-import-not-at-top
  c = runpy.run_path(os.path.join(REPO, "configs", "pretokenize", "scenes.py"))["get_config"]()
  c.data = data_config(assets_["data"])
  c.tokenizers.update(assets_["tokenizers"])
  c.update(dict(samples_per_shard=40, random_views=2, batch_size=48, grid_samples=0))
  c.update(overrides)
  return c


# Module fixtures for the test modules that import them (under these names).
@pytest.fixture(scope="module", name="assets")
def assets_fixture(tmp_path_factory):
  return assets(tmp_path_factory)


@pytest.fixture(scope="module", name="shards")
def shards_fixture(assets, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """Token shards of the tests' data, pre-tokenized with pretokenize_config."""
  out = str(tmp_path_factory.mktemp("tokens"))
  pretokenize.pretokenize(pretokenize_config(assets), out, progress=False)
  return out


def pretrain_config(assets_, shards, **overrides):
  """configs/pretrain/scenes_tiny.py shrunk: 2+2 blocks of width 64, batch 16,
  8 steps, one eval batch, no pictures, no TensorBoard."""
  import runpy  # pylint: disable=g-import-not-at-top
  c = runpy.run_path(os.path.join(REPO, "configs", "pretrain", "scenes_tiny.py"))["get_config"]()
  c.data = data_config(assets_["data"], batch_size=16)
  c.tokens.dir = shards
  c.tokenizers.update(assets_["tokenizers"])
  c.model.update(dim=64, encoder_depth=2, decoder_depth=2, num_heads=2)
  c.optimizer.update(warmup_steps=2, lr=1e-3)
  c.update(dict(total_steps=8, log_every=1, checkpoint_every=4, tensorboard=False))
  c.eval.update(dict(every=0, batch_size=8, num_batches=1, baseline_batches=1, grid_samples=0,
                     cross_modal_every_eval=False))
  c.eval.cross_modal.targets = ()
  return with_overrides(c, **overrides)


def with_overrides(c, **overrides):
  """Sets each dotted field of `c` (`"optimizer.lr"=...`) in place; returns `c`."""
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c
