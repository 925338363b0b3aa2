"""What configs/tokenizers/{rgb,depth,semseg}_scenes.py share: data, model, schedule.

Not a config itself: the configs beside it call
`vq_scenes(modality, arg, num_steps)`, which writes every field the tokenizer
job reads, and set what differs (the loss). The fields are documented in
m4/jobs/tokenizer.py.
"""

import ml_collections

from m4 import config_files


def vq_scenes(config_file: str, modality: str, arg, num_steps: int) -> ml_collections.ConfigDict:
  """A VQ tokenizer for `modality` on 64 px scenes: 8x8 tokens; `arg` "quick": the quickstart's."""
  variant = config_files.variant(arg, config_file, ("full", "quick"))
  c = ml_collections.ConfigDict()
  c.job = "tokenizer"
  c.modality = modality  # A registered image modality: its grid and vocabulary.
  c.seed = 0
  # The shared scenes training data (random crops of 60-100 % of the area, flips).
  c.data = config_files.load(__file__, "../data/scenes64.py").get_config().data
  c.data.batch_size = 32
  # 64 px -> space-to-depth 2 -> 32, 16, 8; EMA codebook with dead-code restarts.
  c.model = ml_collections.ConfigDict(dict(
      channels=(32, 64, 128), num_res_blocks=1, code_dim=32, patch=0,
      ema_decay=0.99, dead_threshold=0.03, restart_noise=0.01))
  c.io = ml_collections.ConfigDict()
  c.io.loss_weights = ml_collections.ConfigDict()  # Empty: m4.tokenizers.modality_io's.
  c.io.num_classes = 0  # semseg only: number of classes.
  c.commitment = 0.25
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=100, end_learning_rate=1e-5, weight_decay=1e-4,
      b1=0.9, b2=0.99, grad_clip=1.0))
  c.num_steps = num_steps
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.eval = ml_collections.ConfigDict(dict(
      split="validation", num_samples=0, batch_size=128, grid_rows=8))  # 0: the whole split.
  c.mesh = ml_collections.ConfigDict({"data": -1})
  c.sharding_rules = None  # m4.sharding.DEFAULT_RULES.
  if variant == "quick":  # A couple of minutes on 2 CPU cores, lower quality.
    c.model.channels = (16, 32, 64)
    c.num_steps = 200
    c.optimizer.warmup_steps = 50
    c.eval.num_samples = 256
  return c
