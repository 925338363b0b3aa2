"""Measures a training data pipeline in samples/s and draws one of its batches.

    python -m m4.tools.bench_data --config=configs/data/scenes64.py --steps=100 \
        [--config.data.num_workers=2] [--grid=batch.png]

`--config` is any config with `data` and `seed` (a job's config works).
The first `--warmup` batches (worker start-up, dataset creation) are timed
apart. Prints one JSON line: samples/s, batch size, workers, load average.
"""

import json
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
import tqdm

from m4 import pictures
from m4.data import pipeline
from m4.data import sources

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config with `data` and `seed`.")
_STEPS = flags.DEFINE_integer("steps", 100, "Batches to time (after the warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Batches drawn before timing starts.")
_GRID = flags.DEFINE_string("grid", "", "If set, a PNG of the first batch's first 8 samples.")


def save_batch_grid(path: str, batch, num: int = 8) -> str:
  keys = [k for k in ("rgb", "depth", "semseg") if k in batch]
  rows = [{k: batch[k][i] for k in keys} for i in range(min(num, len(batch["id"])))]
  captions = [str(c) for c in batch["caption"][:num]] if "caption" in batch else None
  return pictures.save_grid(path, rows, captions)


def main(argv):
  del argv
  config = _CONFIG.value
  t0 = time.perf_counter()
  source = sources.make_source(config.data, config.data.train_split)  # Made on first use.
  made_s = time.perf_counter() - t0
  it = pipeline.make_iterator(config.data, config.data.train_split, seed=config.seed,
                              training=True, source=source)
  t0 = time.perf_counter()
  first = next(it)
  for _ in range(_WARMUP.value - 1):
    next(it)
  warmup_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in tqdm.trange(_STEPS.value, desc="batches", unit="batch"):
    batch = next(it)
  seconds = time.perf_counter() - t0
  if hasattr(it, "close"):
    it.close()
  batch_size = int(np.shape(batch["id"])[0])
  result = {
      "samples_per_sec": round(_STEPS.value * batch_size / seconds, 1),
      "batches_per_sec": round(_STEPS.value / seconds, 2),
      "batch_size": batch_size, "steps": _STEPS.value,
      "num_workers": int(config.data.num_workers), "read_threads": int(config.data.read_threads),
      "image_size": list(config.data.image_size), "warmup_s": round(warmup_s, 2),
      "source_ready_s": round(made_s, 2), "cpus": os.cpu_count(),
      "load_average": [round(x, 2) for x in os.getloadavg()],
  }
  if _GRID.value:
    result["grid"] = save_batch_grid(_GRID.value, first)
  print(json.dumps(result))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
