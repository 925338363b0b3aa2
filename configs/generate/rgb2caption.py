"""RGB (pixels) -> caption, autoregressive with a key/value cache.

    python -m m4.main --config=configs/generate/rgb2caption.py \
        --workdir=workdirs/generate/rgb2caption --config.init=workdirs/pretrain/scenes_tiny

`:sample` draws with temperature 0.7 and top-p 0.9 instead of greedily.
Scored by the (shape, colour) pairs the caption names against the scene.
"""

import os
import runpy

_COMMON = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))


def get_config(arg=None):
  c = _COMMON["base"](inputs=("rgb_pixels",), targets=("caption",))
  if arg == "sample":
    c.decoding.caption.temperature = 0.7
    c.decoding.caption.top_p = 0.9
  elif arg is not None:
    raise ValueError(f"rgb2caption: unknown variant {arg!r}; use no argument or 'sample'.")
  return c
