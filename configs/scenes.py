"""The scenes dataset (m4's embedded default), rendered once and reused.

    python -m m4.main --config=configs/scenes.py --workdir=workdirs/scenes

writes the dataset to workdirs/scenes/data (10k train / 1k validation / 1k
test at 64 px; 3.5 minutes with 2 workers on the shared 2-core machine) and a grid of
validation samples to workdirs/scenes/scenes_grid.png. The same data without
m4.main: `python -m m4.data.scenes --out DIR --num 10000 --workers 2`.
"""

import ml_collections

from m4 import config_files


def get_config(arg=None):
  config_files.variant(arg, __file__, ("default",))
  config = ml_collections.ConfigDict()
  config.job = "scenes"
  config.data = ml_collections.ConfigDict(dict(
      kind="scenes",
      dir="workdirs/scenes/data",
      resolution=64,
      min_objects=1,
      max_objects=4,
      seed=0,
      antialias=2,  # RGB supersamples per pixel side.
      num_train=10000,
      num_validation=1000,
      num_test=1000,
      workers=2,  # Rendering processes; the result does not depend on it.
  ))
  config.grid_split = "validation"
  config.grid_rows = 8
  config.benchmark_samples = 200  # Rendered in-process to time one core.
  return config
