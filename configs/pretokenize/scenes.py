"""Token shards of the scenes dataset (64 px): rgb, depth, semseg tokens + captions.

    python -m m4.main --config=configs/pretokenize/scenes.py --workdir=workdirs/tokens/scenes64

Reads the dataset of configs/data/scenes64.py and the VQ tokenizers
vq_rgb / vq_depth / vq_semseg (`m4.tokenizers.load` names: trained with
configs/tokenizers/*_scenes.py into workdirs/tokenizers/<name>). Every
training sample gets its central view and 3 random aligned crops + flips
(crop 60-100 % of the area); validation and test samples their central view.
Pretraining (configs/pretrain/scenes_tiny.py) reads the shards.
"""

import ml_collections

from m4 import config_files


def get_config(arg=None):
  config_files.variant(arg, __file__, ("default",))
  c = ml_collections.ConfigDict()
  c.job = "pretokenize"
  c.seed = 0  # Seeds the random views: (seed, split, index, view).
  c.data = config_files.load(__file__, "../data/scenes64.py").get_config().data  # Its crop settings define the views.
  c.modalities = ml_collections.ConfigDict()  # Registry entries to add (none: the defaults).
  c.tokenize = ("rgb_pixels", "rgb", "depth", "semseg", "caption")
  c.tokenizers = ml_collections.ConfigDict(dict(rgb="vq_rgb", depth="vq_depth",
                                                semseg="vq_semseg"))
  c.splits = ("train", "validation", "test")
  c.view_splits = ("train",)  # Splits whose samples get random views besides the central one.
  c.random_views = 3
  c.samples_per_shard = 1000
  c.max_samples = 0  # 0: every sample of each split.
  c.batch_size = 64  # Images per jitted tokenizer call.
  c.grid_samples = 4  # Training samples drawn in views_grid.png, every view decoded.
  return c
