"""VQ tokenizer for depth on the scenes dataset: 64 px -> 8x8 tokens, 1024 codes.

    python -m m4.main --config=configs/tokenizers/depth_scenes.py --workdir=workdirs/tokenizers/vq_depth
    python -m m4.main --config=configs/tokenizers/depth_scenes.py:quick --workdir=DIR

Depth is modelled as normalised log-depth (m4.data.transforms) with a robust
loss over valid pixels and a validity (sky) channel. `quick` is sized for the
quickstart; the default is the full run recorded in experiments/tokenizers/.
"""

from m4 import config_files
_COMMON = config_files.load(__file__, "common.py")


def get_config(arg=None):
  c = _COMMON.vq_scenes(__file__, "depth", arg, num_steps=1000)
  c.io.loss_weights = {"depth": 1.0, "valid": 0.1}
  return c
