"""Token shards of the scenes dataset (64 px): rgb, depth, semseg tokens + captions.

    python -m m4.main --config=configs/pretokenize/scenes.py --workdir=workdirs/tokens/scenes64

Reads the dataset of configs/data/scenes64.py and the VQ tokenizers
vq_rgb / vq_depth / vq_semseg (`m4.tokenizers.load` names: trained with
configs/tokenizers/*_scenes.py into workdirs/tokenizers/<name>). Every
training sample gets its central view and 3 random aligned crops + flips
(crop 60-100 % of the area); validation and test samples their central view.
Pretraining (configs/pretrain/scenes_tiny.py) reads the shards.
"""

import os
import runpy

from m4.trainers import pretokenize

_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "data", "scenes64.py")


def get_config(arg=None):
  del arg
  c = pretokenize.default_config()
  c.data = runpy.run_path(_DATA)["get_config"]().data
  c.tokenizers.update(dict(rgb="vq_rgb", depth="vq_depth", semseg="vq_semseg"))
  c.random_views = 3
  c.samples_per_shard = 1000
  c.batch_size = 64
  return c
