"""The `scenes` job: makes (or reuses) the scenes dataset and draws a grid of it.

    python -m m4.main --config=configs/scenes.py --workdir=workdirs/scenes

Config fields:
  data: the dataset (m4.data.scenes.ensure's fields: dir, resolution,
    min_objects, max_objects, seed, antialias, num_train, num_validation,
    num_test, workers).
  grid_split, grid_rows: the split and number of samples the grid shows.
  benchmark_samples: samples rendered in this process (one core) to measure
    the renderer's speed; 0 skips it.

Writes WORKDIR/scenes_grid.png; the dataset goes to `data.dir`.
"""

import os

from m4 import workdir as workdir_lib
from m4.data import scenes


def run(config, workdir: str) -> dict:
  data = config.data
  workdir_lib.require(data.get("kind", "scenes") == "scenes", "data.kind",
                      f"the scenes job makes scenes data, got {data.get('kind')!r}.")
  workdir_lib.require(bool(data.get("dir")), "data.dir", "the dataset needs a directory.")
  workdir_lib.require(config.grid_split in scenes.SPLITS, "grid_split",
                      f"{config.grid_split!r} is not one of {scenes.SPLITS}.")
  workdir_lib.require(config.grid_rows >= 1, "grid_rows", "must be >= 1.")
  workdir_lib.require(config.benchmark_samples >= 0, "benchmark_samples", "must be >= 0.")
  workdir_lib.write_config(config, workdir)  # Checked: from here on the job writes.
  stats = {}
  scenes.ensure(data.dir, data, stats=stats)
  spec = scenes.read_spec(data.dir)
  summary = {
      "data_dir": os.path.abspath(data.dir),
      "samples": {split: spec.num(split) for split in scenes.SPLITS},
      "resolution": spec.resolution,
  }
  if stats:
    written = sum(s["samples"] for s in stats.values())
    seconds = sum(s["seconds"] for s in stats.values())
    summary["generated"] = {"samples": written, "seconds": round(seconds, 1),
                            "samples_per_sec": written / max(seconds, 1e-9),
                            "workers": int(data.get("workers", 1) or 1)}
  else:
    summary["generated"] = "reused an existing dataset"
  if config.benchmark_samples:
    summary["render_samples_per_sec_1core"] = scenes.benchmark(spec, config.benchmark_samples)
  summary["grid"] = scenes.grid(os.path.abspath(os.path.join(workdir, "scenes_grid.png")),
                                data.dir, config.grid_split, config.grid_rows)
  return summary
