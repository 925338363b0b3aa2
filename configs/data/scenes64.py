"""The scenes data at 64 px: 16000 training scenes, random crops of 60-100 % of the area, flips.

    python -m m4.tools.bench_data --config=configs/data/scenes64.py --steps=100

A `config.data` for jobs to copy, and what `m4.tools.bench_data` measures.
The dataset is made in `data.dir` on first use (about a minute for 16000
training samples with 2 workers).
"""

from m4 import config_files
from m4.data import pipeline


def get_config(arg=None):
  config_files.variant(arg, __file__, ("default",))
  config = pipeline.data_config(
      kind="scenes", dir="workdirs/data/scenes64", resolution=64, max_objects=4,
      num_train=16000, num_validation=500, num_test=500,
      image_size=(64, 64), crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25), flip=True,
      batch_size=64, num_workers=0)
  return pipeline.ml_collections.ConfigDict({"seed": 0, "data": config})
