"""VQ tokenizer for RGB on the scenes dataset: 64 px -> 8x8 tokens, 1024 codes.

    python -m m4.main --config=configs/tokenizers/rgb_scenes.py --workdir=workdirs/tokenizers/vq_rgb
    python -m m4.main --config=configs/tokenizers/rgb_scenes.py:quick --workdir=DIR

`quick` is sized for the quickstart (a couple of minutes on 2 CPU cores,
lower quality); the default is the full run recorded in
experiments/tokenizers/. The codebook size and the token grid come from the
modality registry (m4/modalities.py).
"""

from m4 import config_files
_COMMON = config_files.load(__file__, "common.py")


def get_config(arg=None):
  c = _COMMON.vq_scenes(__file__, "rgb", arg, num_steps=2000)
  c.io.loss_weights = {"mse": 1.0, "l1": 0.1}
  return c
