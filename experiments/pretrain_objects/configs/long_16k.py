"""L1: the recipe (4+4, width 128, batch 32, lr 3e-3, mixture 3:1) for 4000 steps on 16k scenes.

Data: configs/scenes.py with num_train=16000 (one random view each),
pretokenized with the quick tokenizers of ROOT (see ablation.py):

    python -m m4.main --config=experiments/pretrain_objects/configs/long_16k.py \
        --workdir=workdirs/ablations/l1
"""

import os
from m4 import config_files

DATA16K = os.environ.get("M4_ABLATION_DATA16K", "workdirs/ablations/data16k")


def get_config(arg=None):
  config_files.variant(arg, __file__, ("default",))
  c = config_files.load(__file__, "ablation.py").get_config("full")
  c.data.update(dict(dir=DATA16K, num_train=16000, num_validation=512, num_test=512))
  c.data.batch_size = 32
  c.tokens.dir = os.environ.get("M4_ABLATION_TOKENS16K", "workdirs/ablations/tokens16k")
  c.optimizer.lr = 3e-3
  c.masking.mixture.rgb2all.weight = 3.0
  c.total_steps = 4000
  c.optimizer.warmup_steps = 200
  c.eval.every = c.checkpoint_every = 1000
  c.log_every = 100
  return c
