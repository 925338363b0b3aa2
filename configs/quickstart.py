"""The main job: the whole m4 pipeline on the embedded scenes dataset.

    python -m m4.main --config=configs/quickstart.py --workdir=workdirs/quickstart

Stages run one after another in one workdir and are skipped when done, so the
same command resumes. Budget: under 20 minutes on 2 CPU cores. Longer configs
for the quality figures live in configs/<stage>/ and experiments/.
"""

import ml_collections


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.trainer = "quickstart"
  config.seed = 0
  config.stages = ml_collections.ConfigDict()
  config.order = ()  # Stage names in the order they run.
  return config
