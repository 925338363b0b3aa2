"""The main job: the whole m4 pipeline on the embedded scenes dataset.

    python -m m4.main --config=configs/quickstart.py --workdir=workdirs/quickstart
    python -m m4.main --config=configs/quickstart.py:full --workdir=workdirs/scenes_full

Stages run one after another in one workdir and are skipped when done, so the
same command resumes. Budget: under 20 minutes on 2 CPU cores.

`full` is the same pipeline at the size of the recorded results
(experiments/pretrain_objects/, generation/, transfer_scenes/): 16000
training scenes, the full pretraining (configs/pretrain/scenes_tiny.py: about
45 minutes on 2 cores), generation on 500 test scenes and the full transfer
table (configs/transfer/scenes.py: every task, a learning-rate sweep per arm,
3 seeds, the conv-net reference at 10 % and 100 % of the labels; hours).
"""

import ml_collections

from m4 import config_files

# The run's own tokenizers, trained by its tok_* stages.
TOKENIZERS = dict(rgb="{root}/tok_rgb", depth="{root}/tok_depth", semseg="{root}/tok_semseg",
                   caption="{root}/tok_caption/wordpiece_scenes.json")


def _stage(path: str, arg=None) -> ml_collections.ConfigDict:
  """get_config(arg) of configs/<path>."""
  return config_files.load(__file__, path).get_config(arg)


def _caption_tokenizer_stage(data: ml_collections.ConfigDict):
  """configs/tokenizers/caption_scenes.py on the run's training captions."""
  config = _stage("tokenizers/caption_scenes.py")
  config.data.update(data)
  config.data.modalities = ("caption",)
  return config


def _pretokenize_stage(data: ml_collections.ConfigDict):
  """configs/pretokenize/scenes.py with the run's data and tokenizers (1 random view)."""
  config = _stage("pretokenize/scenes.py")
  config.data.update(data)
  config.tokenizers.update(TOKENIZERS)
  config.random_views = 1
  return config


def _pretrain_stage(data: ml_collections.ConfigDict, variant: str):
  """configs/pretrain/scenes_tiny.py (its `quick` variant for the quickstart) on the shards."""
  config = _stage("pretrain/scenes_tiny.py", "quick" if variant == "quick" else None)
  config.data.update(data)
  config.tokens.dir = "{root}/tokens"
  config.tokenizers.update(TOKENIZERS)
  return config


def _tokenizer_stage(modality: str, data: ml_collections.ConfigDict):
  """configs/tokenizers/<modality>_scenes.py:quick, on the run's data."""
  config = _stage(f"tokenizers/{modality}_scenes.py", "quick")
  config.data.update(data)
  return config


def _generate_stage(data: ml_collections.ConfigDict, num_samples: int):
  """configs/generate/rgb2all.py on test scenes with the run's pretrained model."""
  config = _stage("generate/rgb2all.py")
  config.data.update(data)
  config.init = "{root}/pretrain"
  config.tokenizers.update(TOKENIZERS)
  config.num_samples = num_samples
  return config


def _transfer_stage(data: ml_collections.ConfigDict, variant: str):
  """configs/transfer/scenes.py (`quick`, or the full table) with the run's model."""
  config = _stage("transfer/scenes.py", "quick" if variant == "quick" else None)
  config.data.update(data)
  config.tokenizers.depth = TOKENIZERS["depth"]
  config.init = "{root}/pretrain"
  return config


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("quick", "full"))
  full = variant == "full"
  config = ml_collections.ConfigDict()
  config.job = "quickstart"
  config.seed = 0
  config.stages = ml_collections.ConfigDict()

  # Stage "data": the scenes dataset in WORKDIR/data (4000 train / 256
  # validation / 256 test at 64 px, about half a minute with 2 workers on 2
  # cores; full: 16000 / 500 / 500) and a grid of it. Later stages read it
  # through `data` below.
  data = ml_collections.ConfigDict(dict(
      kind="scenes", dir="{root}/data", resolution=64, min_objects=1, max_objects=4,
      seed=0, antialias=2, num_train=16000 if full else 4000,
      num_validation=500 if full else 256, num_test=500 if full else 256, workers=2))
  config.stages.data = ml_collections.ConfigDict(dict(
      job="scenes", data=data, grid_split="validation", grid_rows=8,
      benchmark_samples=50))

  # Stages "tok_rgb", "tok_depth", "tok_semseg": the VQ tokenizers (the quick
  # variants of configs/tokenizers/*_scenes.py, 1-2.5 minutes each on 2 cores); later
  # stages load them with m4.tokenizers.load("{root}/tok_rgb").
  for modality in ("rgb", "depth", "semseg"):
    config.stages[f"tok_{modality}"] = _tokenizer_stage(modality, data)

  # Stage "tok_caption": the WordPiece caption tokenizer (seconds), in
  # WORKDIR/tok_caption/wordpiece_scenes.json.
  config.stages.tok_caption = _caption_tokenizer_stage(data)

  # Stage names in the order they run.
  config.order = ("data", "tok_rgb", "tok_depth", "tok_semseg", "tok_caption")

  # Stage "tokens": every sample's tokens and RGB pixels (central view + 1
  # random crop for training) in WORKDIR/tokens, so pretraining reads no raw data.
  config.stages.tokens = _pretokenize_stage(data)
  # Stage "pretrain": the 4M model, RGB pixels in (configs/pretrain/scenes_tiny.py).
  config.stages.pretrain = _pretrain_stage(data, variant)
  config.order += ("tokens", "pretrain")

  # Stage "generate": rgb -> depth, semseg, caption on test scenes (64; full:
  # all 500), a grid of inputs, generations and ground truth, and the figures
  # against the tokenizers' reconstruction (configs/generate/rgb2all.py).
  config.stages.generate = _generate_stage(data, 500 if full else 64)
  config.order += ("generate",)

  # Stage "transfer": object count and semantic segmentation from RGB pixels
  # with 10 % of the labels, probed and fine-tuned, from the pretrained model
  # and from scratch, beside a supervised conv net, side by side in
  # WORKDIR/transfer/eval/results.md; the summary says for each row whether
  # pretraining helped (full: configs/transfer/scenes.py's whole table).
  config.stages.transfer = _transfer_stage(data, variant)
  config.order += ("transfer",)
  return config
