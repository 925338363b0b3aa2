"""RGB -> depth, semseg and caption, each from the RGB pixels alone.

    python -m m4.main --config=configs/generate/rgb2all.py --workdir=workdirs/generate/rgb2all \
        --config.init=workdirs/pretrain/scenes_tiny

Depth and semseg by MaskGIT (8 steps), the caption autoregressively (greedy);
quality against the ground truth and the tokenizers' ceiling in
DIR/eval/metrics.json (experiments/generation/ has the figures).
"""

import os
import runpy

_COMMON = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))


def get_config(arg=None):
  del arg
  return _COMMON["base"](inputs=("rgb_pixels",), targets=("depth", "semseg", "caption"),
                         chained=False)
