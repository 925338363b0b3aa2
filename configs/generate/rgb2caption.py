"""RGB (pixels) -> caption, autoregressive with a key/value cache.

    python -m m4.main --config=configs/generate/rgb2caption.py \
        --workdir=workdirs/generate/rgb2caption --config.init=workdirs/pretrain/scenes_tiny

`:sample` draws with temperature 0.7 and top-p 0.9 instead of greedily.
Scored by the (shape, colour) pairs the caption names against the scene.
"""

from m4 import config_files

_COMMON = config_files.load(__file__, "common.py")


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("greedy", "sample"))
  c = _COMMON.base(inputs=("rgb_pixels",), targets=("caption",))
  if variant == "sample":
    c.decoding.caption.temperature = 0.7
    c.decoding.caption.top_p = 0.9
  return c
