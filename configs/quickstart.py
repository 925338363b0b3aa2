"""The main job: the whole m4 pipeline on the embedded scenes dataset.

    python -m m4.main --config=configs/quickstart.py --workdir=workdirs/quickstart

Stages run one after another in one workdir and are skipped when done, so the
same command resumes. Budget: under 20 minutes on 2 CPU cores. Longer configs
for the quality figures live in configs/<stage>/ and experiments/.
"""

import os
import runpy

import ml_collections


# The quickstart's own tokenizers, trained by its tok_* stages.
_TOKENIZERS = dict(rgb="{root}/tok_rgb", depth="{root}/tok_depth", semseg="{root}/tok_semseg",
                   caption="{root}/tok_caption/wordpiece_scenes.json")


def _stage(path: str, arg=None) -> ml_collections.ConfigDict:
  """get_config(arg) of configs/<path>."""
  return runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), path))[
      "get_config"](arg)


def _caption_tokenizer_stage(data: ml_collections.ConfigDict):
  """configs/tokenizers/caption_scenes.py on the quickstart's training captions."""
  config = _stage("tokenizers/caption_scenes.py")
  config.data.update(data)
  config.data.modalities = ("caption",)
  return config


def _pretokenize_stage(data: ml_collections.ConfigDict):
  """configs/pretokenize/scenes.py with the quickstart's data and tokenizers (1 random view)."""
  config = _stage("pretokenize/scenes.py")
  config.data.update(data)
  config.tokenizers.update(_TOKENIZERS)
  config.random_views = 1
  return config


def _pretrain_stage(data: ml_collections.ConfigDict):
  """configs/pretrain/scenes_tiny.py:quick on the quickstart's token shards."""
  config = _stage("pretrain/scenes_tiny.py", "quick")
  config.data.update(data)
  config.tokens.dir = "{root}/tokens"
  config.tokenizers.update(_TOKENIZERS)
  return config


def _tokenizer_stage(modality: str, data: ml_collections.ConfigDict):
  """configs/tokenizers/<modality>_scenes.py:quick, on the quickstart's data."""
  config = _stage(f"tokenizers/{modality}_scenes.py", "quick")
  config.data.update(data)
  return config


def _generate_stage(data: ml_collections.ConfigDict):
  """configs/generate/rgb2all.py on 64 test scenes with the quickstart's run."""
  config = _stage("generate/rgb2all.py")
  config.data.update(data)
  config.init = "{root}/pretrain"
  config.tokenizers.update(_TOKENIZERS)
  config.num_samples = 64
  return config


def _transfer_stage(data: ml_collections.ConfigDict):
  """configs/transfer/scenes.py:quick on the quickstart's data, tokenizers and model."""
  config = _stage("transfer/scenes.py", "quick")
  config.data.update(data)
  config.tokenizers.update({m: _TOKENIZERS[m] for m in ("rgb", "depth")})
  config.init = "{root}/pretrain"
  return config


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.trainer = "quickstart"
  config.seed = 0
  config.stages = ml_collections.ConfigDict()

  # Stage "data": the scenes dataset in WORKDIR/data (4000 train / 256
  # validation / 256 test at 64 px: about a minute with 2 workers on 2 cores)
  # and a grid of it. Later stages read it through `data` below.
  data = ml_collections.ConfigDict(dict(
      kind="scenes", dir="{root}/data", resolution=64, min_objects=1, max_objects=4,
      seed=0, antialias=2, num_train=4000, num_validation=256, num_test=256, workers=2))
  config.stages.data = ml_collections.ConfigDict(dict(
      trainer="scenes", data=data, grid_split="validation", grid_rows=8,
      benchmark_samples=50))

  # Stages "tok_rgb", "tok_depth", "tok_semseg": the VQ tokenizers (the quick
  # variants of configs/tokenizers/*_scenes.py, one to two minutes each); later
  # stages load them with m4.tokenizers.load("{root}/tok_rgb").
  for modality in ("rgb", "depth", "semseg"):
    config.stages[f"tok_{modality}"] = _tokenizer_stage(modality, data)

  # Stage "tok_caption": the WordPiece caption tokenizer (seconds), in
  # WORKDIR/tok_caption/wordpiece_scenes.json.
  config.stages.tok_caption = _caption_tokenizer_stage(data)

  # Stage names in the order they run.
  config.order = ("data", "tok_rgb", "tok_depth", "tok_semseg", "tok_caption")

  # Stage "tokens": every sample's tokens (central view + 1 random crop for
  # training) in WORKDIR/tokens, so pretraining reads tokens, not pixels.
  config.stages.tokens = _pretokenize_stage(data)
  # Stage "pretrain": the 4M model (quick variant of configs/pretrain/scenes_tiny.py).
  config.stages.pretrain = _pretrain_stage(data)
  config.order += ("tokens", "pretrain")

  # Stage "generate": rgb -> depth, semseg, caption on 64 test scenes (about
  # a minute): a grid of inputs, generations and ground truth, and the figures
  # against the tokenizers' reconstruction (configs/generate/rgb2all.py).
  config.stages.generate = _generate_stage(data)
  config.order += ("generate",)

  # Stage "transfer": count and segmentation from RGB tokens with 10 % of the
  # labels, probed and fine-tuned, from the pretrained model and from scratch,
  # side by side in WORKDIR/transfer/eval/results.md (about three minutes).
  config.stages.transfer = _transfer_stage(data)
  config.order += ("transfer",)
  return config
