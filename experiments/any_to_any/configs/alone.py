"""A single-task reference for one cell of the any-to-any matrix.

    M4_ABLATION_ROOT=<a main-job workdir> python -m m4.main \
        --config=experiments/any_to_any/configs/alone.py:depth2semseg --workdir=DIR

The main job's pretraining (experiments/generation_without_rgb/configs/
main_job_no_pixels.py:control: its model, data, 1800 steps, batch 32, 64 +
64 tokens) with one mixture component: the source modality whole in, only
the target out. What the budget allows for that cell, as the encoder-only
oracle is for RGB -> semseg (experiments/pretrain_objects/).
"""

from m4 import config_files

TASKS = {"depth2semseg": ("depth", "semseg"), "semseg2depth": ("semseg", "depth")}


def get_config(arg=None):
  source, target = TASKS[config_files.variant(arg, __file__, tuple(TASKS))]
  c = config_files.load(__file__, "../../generation_without_rgb/configs/main_job_no_pixels.py"
                        ).get_config("control")
  task = c.masking.mixture.all2all.to_dict()
  task["input_alphas"] = {n: (1.0 if n == source else 0.0) for n in task["input_alphas"]}
  task["target_alphas"] = {n: (1.0 if n == target else 0.0) for n in task["target_alphas"]}
  c.masking.mixture = {f"{source}2{target}": task}
  return c
