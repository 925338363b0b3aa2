"""VQ tokenizer for depth on the scenes dataset: 64 px -> 8x8 tokens, 1024 codes.

    python -m m4.main --config=configs/tokenizers/depth_scenes.py --workdir=workdirs/tokenizers/vq_depth
    python -m m4.main --config=configs/tokenizers/depth_scenes.py:quick --workdir=DIR

Depth is modelled as normalised log-depth (m4.data.transforms) with a robust
loss over valid pixels and a validity (sky) channel. `quick` is sized for the
quickstart; the default is the full run recorded in experiments/tokenizers/.
"""

import os
import runpy

from m4.trainers import tokenizer

# The shared scenes training data (random crops of 60-100 % of the area, flips).
_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "data", "scenes64.py")


def get_config(arg=None):
  c = tokenizer.default_config("depth")
  c.data = runpy.run_path(_DATA)["get_config"]().data
  c.io.loss_weights = {"depth": 1.0, "valid": 0.1}
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
    raise ValueError(f"depth_scenes: unknown variant {arg!r}; use no argument or 'quick'.")
  return c
