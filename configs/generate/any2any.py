"""One modality in, every other one out: a row of the any-to-any matrix.

    python -m m4.main --config=configs/generate/any2any.py:depth \
        --workdir=workdirs/generate/depth2all --config.init=workdirs/pretrain/scenes_tiny

The variant names the one input, given from the ground truth: `rgb_pixels`
(the default), `rgb` (the RGB tokens), `depth`, `semseg` or `caption`. Each
of rgb, depth, semseg and caption that is not the input is generated from
it alone (not chained), the images in one greedy step, the caption
greedily token by token, as configs/generate/rgb2all.py decodes. Each
figure in DIR/eval/metrics.json has its chance level beside it
(`<figure>/other_scene`: the same outputs against another scene) and its
ceiling (the truth through the tokenizer); experiments/any_to_any/ has
the matrix of all five rows.
"""

from m4 import config_files

_COMMON = config_files.load(__file__, "common.py")
SOURCES = ("rgb_pixels", "rgb", "depth", "semseg", "caption")
TARGETS = ("rgb", "depth", "semseg", "caption")


def get_config(arg=None):
  source = config_files.variant(arg, __file__, SOURCES)
  c = _COMMON.base(inputs=(source,), targets=tuple(t for t in TARGETS if t != source))
  for name in c.targets:
    if name != "caption":
      c.decoding[name].num_steps = 1
      c.decoding[name].temperature = 0.0
  return c
