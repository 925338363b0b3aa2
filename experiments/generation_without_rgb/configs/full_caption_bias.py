"""The full-size main job (F1) with 4M's "caption bias" mixture component.

    python -m m4.main --config=experiments/generation_without_rgb/configs/full_caption_bias.py \
        --workdir=ROOT
    # the control on the same data, tokenizers and shards: link ROOT's finished
    # stages (data, tok_*, tokens) into ROOT_C, then
    python -m m4.main --config=experiments/generation_without_rgb/configs/full_caption_bias.py:control \
        --workdir=ROOT_C
    # the component at F2's length (experiments/pretrain_objects/configs/f2.py), on ROOT's stages
    python -m m4.main --config=experiments/generation_without_rgb/configs/full_caption_bias.py:f2 \
        --workdir=ROOT_F2

`configs/quickstart.py:full` (16k scenes, the quick tokenizers, 4+4 blocks,
6000 steps, generation on the 500 test scenes) without its transfer stage,
with the caption-bias component of `main_job_caption_bias.py` added at
weight 1 beside "RGB to all" 3 : "all to all" 1 (equal compute: the same
steps and batch). `:control` is F1 itself, the shipped mixture; `:f2` is the
component added to F2 itself (`pretrain_objects/configs/f2.py`: 12000 steps).
"""

from m4 import config_files


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("caption_bias", "control", "f2"))
  if variant == "f2":
    c = config_files.load(__file__, "../../pretrain_objects/configs/f2.py").get_config()
  else:
    c = config_files.load(__file__, "../../../configs/quickstart.py").get_config("full")
    c.order = tuple(s for s in c.order if s != "transfer")
    del c.stages.transfer
  if variant in ("caption_bias", "f2"):
    config_files.load(__file__, "main_job_caption_bias.py").add_component(
        c.stages.pretrain.masking.mixture)
  return c
