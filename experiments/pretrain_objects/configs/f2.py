"""F2: the main job at full size (configs/quickstart.py:full) pretrained for 12000 steps.

    python -m m4.main --config=experiments/pretrain_objects/configs/f2.py --workdir=workdirs/scenes_f2
    M4_FULL_ROOT=workdirs/scenes_f2 python -m m4.main \
        --config=experiments/transfer_scenes/configs/full_model.py --workdir=workdirs/transfer/scenes_f2

Everything as `full` (16k scenes, the quick tokenizers, the shipped recipe
of configs/pretrain/scenes_tiny.py, generation on the 500 test scenes) but
twice the pretraining steps (the cosine decays over all of them) and no
transfer stage: the second command runs the recorded transfer table on it.
About 83 minutes on a 2-core Zen 4 EPYC, 76 of them pretraining
(experiments/pretrain_objects/README.md, "F2").
"""

from m4 import config_files


def get_config(arg=None):
  config_files.variant(arg, __file__, ("default",))
  c = config_files.load(__file__, "../../../configs/quickstart.py").get_config("full")
  c.stages.pretrain.total_steps = 12000
  c.order = tuple(s for s in c.order if s != "transfer")
  del c.stages.transfer
  return c
