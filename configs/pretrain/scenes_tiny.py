"""4M pretraining on the scenes token shards, sized for a CPU.

    python -m m4.main --config=configs/pretrain/scenes_tiny.py --workdir=workdirs/pretrain/scenes_tiny
    python -m m4.main --config=configs/pretrain/scenes_tiny.py:quick --workdir=DIR   # quickstart size

Needs the token shards of configs/pretokenize/scenes.py in
workdirs/tokens/scenes64 (made with the vq_rgb / vq_depth / vq_semseg
tokenizers named below; `--config.tokens.source=on_the_fly` tokenizes the
raw data instead). `python -m m4.main --config=configs/quickstart.py:full`
runs the whole chain (data, tokenizers, shards, this pretraining, generation,
transfer) in one workdir.

Model: 4+4 blocks, width 128, 4 heads (SwiGLU, no biases), 64 encoder + 64
decoder tokens per sample. RGB goes in as raw 8x8-pixel patches
(`rgb_pixels`, as 4M-7's `rgb@224`) and its VQ tokens are a target like
depth, semseg and the caption. The masking is 4M-7's mixture ("RGB to all"
and "all to all") weighted 3:1 towards "RGB to all", with condition dropout
for guidance. Batch 32, AdamW lr 3e-3, 6000 steps: about 45 minutes on 2
CPU cores. Why these settings (pixels in, the mixture weight, the learning
rate, the batch size) and what each bought: experiments/pretrain_objects/.

`quick` (the quickstart stage): 3+3 blocks, 1800 steps, about 10 minutes on
a 2-core EPYC with AVX-512 (1200 steps before: semseg generation 0.46 mIoU
and no semseg transfer gain; 1800: 0.52 and a fine-tuning gain,
experiments/quickstart/).
"""

import ml_collections

from m4 import config_files
from m4.data import masking

NAMES = ("rgb_pixels", "rgb", "depth", "semseg", "caption")
TARGETS = ("rgb", "depth", "semseg", "caption")


def mixture(names) -> ml_collections.ConfigDict:
  """4M-7's mixture over `names` (RGB pixels in), 64 + 64 tokens, weighted
  "RGB to all" 3 : 1 "all to all", with condition dropout for guidance."""
  c = masking.preset("4m7", num_input_tokens=64, num_target_tokens=64, modalities=names,
                     rgb="rgb_pixels")
  c.mixture.rgb2all.weight = 3.0
  c.condition_dropout = dict(all=0.05, per_modality=0.05)
  return c


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("full", "quick"))
  c = ml_collections.ConfigDict()
  c.job = "pretrain"
  c.seed = 0
  c.modalities = ml_collections.ConfigDict()  # The embedded registry entries.
  c.data = config_files.load(__file__, "../data/scenes64.py").get_config().data  # Raw data + crops (on the fly).
  c.data.batch_size = 32
  c.tokens = ml_collections.ConfigDict(dict(source="shards", dir="workdirs/tokens/scenes64"))
  c.tokenizers = ml_collections.ConfigDict(dict(
      rgb="vq_rgb", depth="vq_depth", semseg="vq_semseg"))
  c.masking = mixture(NAMES)
  c.model = ml_collections.ConfigDict(dict(
      dim=128, encoder_depth=4, decoder_depth=4, num_heads=4, mlp_type="swiglu",
      encoder_modalities=NAMES, decoder_modalities=TARGETS, patch_size=8,
      num_encoder_tokens=64, num_decoder_tokens=64,
      # Unrolled layers: at this width the layer scan's loop costs more than its
      # faster compile saves (experiments/train_speed/, "Unrolled layers").
      dtype="float32", scan_layers=False, remat="none", head_chunk_size=128))
  c.optimizer = ml_collections.ConfigDict(dict(
      lr=3e-3, warmup_steps=300, final_lr_ratio=0.01, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.05, clip_norm=1.0))
  c.total_steps = 6000
  c.log_every = 100
  c.checkpoint_every = 1500
  c.keep_checkpoints = 2
  c.eval = ml_collections.ConfigDict(dict(
      every=1500, split="validation", batch_size=64, num_batches=0, baseline_batches=0,
      grid_samples=8, cross_modal_every_eval=True,
      cross_modal=dict(inputs=("rgb_pixels",), targets=("depth", "semseg"))))
  c.mesh = ml_collections.ConfigDict({"data": -1})
  c.sharding_rules = None  # m4.sharding.DEFAULT_RULES.
  c.init = ""
  c.tensorboard = True
  # Stop when a step's train loss / gradient norm exceeds this factor times the
  # median of the previous `window` steps (0: no check), after `min_steps` steps.
  c.divergence = ml_collections.ConfigDict(dict(
      loss_factor=3.0, grad_norm_factor=20.0, window=100, min_steps=2))
  if variant == "quick":
    c.model.update(encoder_depth=3, decoder_depth=3)
    c.total_steps = 1800
    c.optimizer.warmup_steps = 100
    c.checkpoint_every = 600
    c.eval.every = 600
    c.log_every = 50
  return c
