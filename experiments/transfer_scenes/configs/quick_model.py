"""The main job's transfer rows on its own model, over 3 seeds and at each arm's optimum.

    M4_QUICK_ROOT=workdirs/quickstart python -m m4.main \
        --config=experiments/transfer_scenes/configs/quick_model.py:finetune_sweep \
        --workdir=workdirs/transfer/quick_finetune_sweep

The quickstart's transfer stage (`configs/transfer/scenes.py:quick`: 10 %
labels, 150 steps), 3 seeds, no conv net, on the model of
`configs/quickstart.py` (M4_QUICK_ROOT: its workdir: data, depth tokenizer,
pretrained model).
`finetune_sweep` (semseg): each arm picks its fine-tuning rate among 1e-3,
3e-3, 1e-2, 3e-2 on validation (the quick config then fine-tuned at 3e-3, a
rate its sweep chose before the upsampling head existed; it now sweeps 3e-3
and 1e-2 for semseg), then 3 seeds on test. Every variant drops the quick
config's per-task overrides (`task_protocols`), as the recorded tables ran;
those tables were made on 1200-step main-job models.
`probe_sweep` (semseg): each arm's probe rate swept on validation over 3e-2
to 1 (the main job's 3e-2 to 3e-1 and one more, as most arms chose its top).
`count`: the main job's count rows exactly as it runs them (probe rate swept
3e-2 to 3e-1, fine-tuning at 3e-3).
`count_finetune_sweep`: count fine-tuning, each arm's rate among 1e-3, 3e-3,
1e-2 on validation, then 3 seeds on test.
"""

import os

from m4 import config_files

QUICK_ROOT = os.environ.get("M4_QUICK_ROOT", "workdirs/quickstart")
_SCENES = "../../../configs/transfer/scenes.py"


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("finetune_sweep", "probe_sweep", "count",
                                                   "count_finetune_sweep"))
  c = config_files.load(__file__, _SCENES).get_config("quick")
  if variant.startswith("count"):  # The main job's count rows, over 3 seeds.
    del c.tasks.semseg
  else:
    del c.tasks.count
  c.task_protocols = {}  # Every arm and seed as the sweeps below say, as recorded.
  c.seeds = (0, 1, 2)
  c.baselines = ()
  c.cached_views = ("probe",)  # As recorded: fine-tunings and conv nets read the loader.
  c.init = os.path.join(QUICK_ROOT, "pretrain")
  c.data.dir = os.path.join(QUICK_ROOT, "data")
  c.tokenizers.depth = os.path.join(QUICK_ROOT, "tok_depth")
  if variant == "finetune_sweep":
    c.protocols = ("finetune",)
    c.sweep.learning_rates = dict(probe=(), finetune=(1e-3, 3e-3, 1e-2, 3e-2), supervised=())
  elif variant == "count_finetune_sweep":
    c.protocols = ("finetune",)
    c.sweep.learning_rates = dict(probe=(), finetune=(1e-3, 3e-3, 1e-2), supervised=())
  elif variant == "probe_sweep":
    c.protocols = ("probe",)
    c.sweep.learning_rates = dict(probe=(3e-2, 1e-1, 3e-1, 1.0), finetune=(), supervised=())
  return c
