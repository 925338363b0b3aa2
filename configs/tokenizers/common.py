"""What configs/tokenizers/{rgb,depth,semseg}_scenes.py share: data, model, schedule.

Not a config itself: the configs beside it call
`vq_scenes(modality, arg, num_steps)` and set what differs (the loss). Every
field is documented in m4/trainers/tokenizer.py.
"""

import os
import runpy

import ml_collections

from m4.trainers import tokenizer

# The shared scenes training data (random crops of 60-100 % of the area, flips).
_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "data", "scenes64.py")


def vq_scenes(modality: str, arg, num_steps: int) -> ml_collections.ConfigDict:
  """A VQ tokenizer for `modality` on 64 px scenes: 8x8 tokens; `arg` "quick": the quickstart's."""
  if arg not in (None, "quick"):
    raise ValueError(f"{modality}_scenes: unknown variant {arg!r}; use no argument or 'quick'.")
  c = tokenizer.default_config(modality)
  c.data = runpy.run_path(_DATA)["get_config"]().data
  c.model.channels = (32, 64, 128)  # 64 px -> space-to-depth 2 -> 32, 16, 8.
  c.model.num_res_blocks = 1
  c.model.code_dim = 32
  c.data.batch_size = 32
  c.num_steps = num_steps
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 100
  c.log_every = 50
  c.checkpoint_every = 500
  c.eval.num_samples = 0  # The whole validation split.
  if arg == "quick":  # A couple of minutes on 2 CPU cores, lower quality.
    c.model.channels = (16, 32, 64)
    c.num_steps = 200
    c.optimizer.warmup_steps = 50
    c.eval.num_samples = 256
  return c
