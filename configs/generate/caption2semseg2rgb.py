"""Caption -> semseg -> RGB: a scene drawn from its description, chained.

    python -m m4.main --config=configs/generate/caption2semseg2rgb.py \
        --workdir=workdirs/generate/caption2semseg2rgb --config.init=workdirs/pretrain/scenes_tiny

The semantic map is generated from the true caption (MaskGIT, classifier-free
guidance on the caption), then RGB from caption + generated map. Scored by
object presence: do the shapes the caption names appear in the map?
"""

from m4 import config_files

_COMMON = config_files.load(__file__, "common.py")


def get_config(arg=None):
  config_files.variant(arg, __file__, ("default",))
  c = _COMMON.base(inputs=("caption",), targets=("semseg", "rgb"), chained=True)
  c.decoding.semseg.num_steps = 12
  c.decoding.semseg.temperature = 1.0
  c.decoding.semseg.cfg_scale = 2.0
  c.decoding.rgb.num_steps = 12
  c.decoding.rgb.temperature = 1.0
  return c
