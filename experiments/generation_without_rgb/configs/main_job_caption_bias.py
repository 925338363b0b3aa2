"""The main job's pretraining plus 4M's "caption bias" mixture component.

    M4_ABLATION_ROOT=<a main-job workdir> python -m m4.main \
        --config=experiments/generation_without_rgb/configs/main_job_caption_bias.py --workdir=DIR

The main job's pretraining (`main_job_no_pixels.py:control`: 1800 steps,
batch 32, "RGB to all" 3 : "all to all" 1) with a third component at weight
1, as 4M-7's `mix_mod7_all2allmix_rgb2all_capbias` mixture has: the whole
caption in (input alpha 5, keep "all"), every other input at alpha 0.05, every
target at 0.5. So some samples ask for the scene from its caption alone, the
case caption -> semseg -> rgb generation is.

`:alone` is the single-task reference for what the budget allows: the same
steps with one component only, the whole caption in and only semseg out.
"""

from m4 import config_files

CAPTION_ALPHA, OTHER_ALPHA = 5.0, 0.05


def add_component(mixture):
  """Adds "caption bias" to `mixture`: its "all to all" (same weight, same
  targets) with the caption whole in at CAPTION_ALPHA and every other input
  at OTHER_ALPHA (inputs at 0 stay at 0)."""
  bias = mixture.all2all.to_dict()
  alpha = {"caption": CAPTION_ALPHA}
  bias["input_alphas"] = {n: alpha.get(n, OTHER_ALPHA) if a > 0 else 0.0
                          for n, a in bias["input_alphas"].items()}
  bias["keep"] = dict(bias["keep"], caption="all")
  mixture.caption_bias = bias


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("caption_bias", "alone"))
  c = config_files.load(__file__, "main_job_no_pixels.py").get_config("control")
  add_component(c.masking.mixture)
  if variant == "alone":
    alone = c.masking.mixture.caption_bias.to_dict()
    alone["input_alphas"] = {n: (a if n == "caption" else 0.0) for n, a in alone["input_alphas"].items()}
    alone["target_alphas"] = {n: (a if n == "semseg" else 0.0) for n, a in alone["target_alphas"].items()}
    c.masking.mixture = {"caption2semseg": alone}
  return c
