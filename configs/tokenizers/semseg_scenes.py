"""VQ tokenizer for semantic maps on the scenes dataset: 64 px -> 8x8 tokens, 512 codes.

    python -m m4.main --config=configs/tokenizers/semseg_scenes.py --workdir=workdirs/tokenizers/vq_semseg
    python -m m4.main --config=configs/tokenizers/semseg_scenes.py:quick --workdir=DIR

Classes are one-hot inputs and cross-entropy outputs (255 = unlabelled is
ignored). `quick` is sized for the quickstart; the default is the full run
recorded in experiments/tokenizers/.
"""

import os
import runpy

from m4.data import scenes
from m4.trainers import tokenizer

# The shared scenes training data (random crops of 60-100 % of the area, flips).
_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "data", "scenes64.py")


def get_config(arg=None):
  c = tokenizer.default_config("semseg")
  c.data = runpy.run_path(_DATA)["get_config"]().data
  c.io.num_classes = len(scenes.CLASSES)
  c.io.loss_weights = {"ce": 1.0}
  c.model.channels = (32, 64, 128)  # 64 px -> space-to-depth 2 -> 32, 16, 8.
  c.model.num_res_blocks = 1
  c.model.code_dim = 32
  c.data.batch_size = 32
  c.num_steps = 1000
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 100
  c.log_every = 50
  c.checkpoint_every = 500
  c.eval.num_samples = 0  # The whole validation split.
  if arg == "quick":
    c.model.channels = (16, 32, 64)
    c.num_steps = 200
    c.optimizer.warmup_steps = 50
    c.eval.num_samples = 256
  elif arg is not None:
    raise ValueError(f"semseg_scenes: unknown variant {arg!r}; use no argument or 'quick'.")
  return c
