"""VQ tokenizer for semantic maps on the scenes dataset: 64 px -> 8x8 tokens, 512 codes.

    python -m m4.main --config=configs/tokenizers/semseg_scenes.py --workdir=workdirs/tokenizers/vq_semseg
    python -m m4.main --config=configs/tokenizers/semseg_scenes.py:quick --workdir=DIR

Classes are one-hot inputs and cross-entropy outputs (255 = unlabelled is
ignored). `quick` is sized for the quickstart; the default is the full run
recorded in experiments/tokenizers/.
"""

from m4 import config_files
from m4.data import scenes

_COMMON = config_files.load(__file__, "common.py")


def get_config(arg=None):
  c = _COMMON.vq_scenes(__file__, "semseg", arg, num_steps=1000)
  c.io.num_classes = len(scenes.CLASSES)
  c.io.loss_weights = {"ce": 1.0}
  return c
