"""The main job's pretraining plus a mixture component that withholds the RGB pixels.

    M4_ABLATION_ROOT=<a main-job workdir> python -m m4.main \
        --config=experiments/generation_without_rgb/configs/main_job_no_pixels.py --workdir=DIR

The main job's pretraining stage (configs/pretrain/scenes_tiny.py:quick on
ROOT's shards and tokenizers: 1800 steps, batch 32) with "RGB to all" 3 :
"all to all" 1 : "all but the pixels to all" 1 (E16 of
experiments/pretrain_objects/ at the main job's length), so the model also
practises predicting from captions, depth and semseg without the image.
`:control` is the main job's own mixture on the same settings, to rerun
the baseline with another `--config.seed`.
"""

from m4 import config_files


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("no_pixels", "control"))
  c = config_files.load(__file__, "../../pretrain_objects/configs/ablation.py").get_config("quick")
  c.data.batch_size = 32
  c.total_steps, c.checkpoint_every, c.eval.every = 1800, 600, 600
  if variant == "no_pixels":
    config_files.load(__file__, "../../pretrain_objects/configs/no_pixels_component.py"
                      ).add_component(c.masking.mixture)
  return c
