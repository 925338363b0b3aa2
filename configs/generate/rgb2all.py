"""RGB -> depth, semseg and caption, each from the RGB pixels alone.

    python -m m4.main --config=configs/generate/rgb2all.py --workdir=workdirs/generate/rgb2all \
        --config.init=workdirs/pretrain/scenes_tiny

Depth and semseg in one greedy step, the caption autoregressively (greedy).
Conditioned on a whole image the dense targets are nearly deterministic: on
validation scenes one greedy step gave semseg mIoU 0.649 against 0.614-0.618
for MaskGIT with 8 steps at temperature 0-1 (experiments/pretrain_objects/);
quality against the ground truth and the tokenizers' ceiling in
DIR/eval/metrics.json (experiments/generation/ has the figures).
"""

from m4 import config_files

_COMMON = config_files.load(__file__, "common.py")


def get_config(arg=None):
  config_files.variant(arg, __file__, ("default",))
  c = _COMMON.base(inputs=("rgb_pixels",), targets=("depth", "semseg", "caption"),
                      chained=False)
  for name in ("depth", "semseg"):
    c.decoding[name].num_steps = 1
    c.decoding[name].temperature = 0.0
  return c
