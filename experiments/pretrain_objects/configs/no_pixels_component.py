"""E16: E13 (the recipe at quick scale) plus a mixture component that withholds the RGB pixels.

    python -m m4.main --config=experiments/pretrain_objects/configs/no_pixels_component.py \
        --workdir=workdirs/ablations/e16

"RGB to all" 3 : "all to all" 1 : "all but the pixels to all" 1, so that the
model also learns to predict from captions, depth and semseg without the
image (caption -> semseg -> rgb; experiments/generation/).
"""

from m4 import config_files


def get_config(arg=None):
  config_files.variant(arg, __file__, ("default",))
  c = config_files.load(__file__, "ablation.py").get_config("quick")
  c.data.batch_size = 32
  c.total_steps = 900
  c.optimizer.warmup_steps = 90
  c.optimizer.lr = 3e-3
  c.eval.every = c.checkpoint_every = 300
  c.log_every = 50
  c.masking.mixture.rgb2all.weight = 3.0
  add_component(c.masking.mixture)
  return c


def add_component(mixture):
  """Adds "all but the pixels to all" to `mixture`: its "all to all" with the
  RGB pixels' input alpha at 0, at the same weight."""
  no_pixels = mixture.all2all.to_dict()
  no_pixels["input_alphas"] = dict(no_pixels["input_alphas"], rgb_pixels=0.0)
  mixture.no_pixels2all = no_pixels
