"""Times the main job's VQ tokenizer training step, on one device or one per core.

    python experiments/train_speed/tokenizer_step.py --workdir=workdirs/quickstart [--cpu_devices=1]

Builds the `tok_<modality>` stage of configs/quickstart.py (the quick
tokenizer: channels 16/32/64, batch 32) on the scenes data of a main-job
workdir, times the loader alone, then the jitted train step on one batch
(compiled first), data-parallel over the process's devices as the job runs
it. Prints one line per modality: loader ms per batch, step ms, XLA's GFLOP
per step and device, and the achieved GFLOP/s (all devices).
"""

import argparse
import os
import runpy
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from m4 import sharding  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a main-job workdir (its data/ is read)")
  p.add_argument("--modalities", default="rgb,depth,semseg")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--cpu_devices", type=int, default=0, help="0: one per core, as m4.main")
  a = p.parse_args()
  sharding.use_cpu_devices(a.cpu_devices)  # Before JAX starts a backend.
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from m4 import modalities  # pylint: disable=import-outside-toplevel
  from m4.data import pipeline  # pylint: disable=import-outside-toplevel
  from m4.jobs import tokenizer  # pylint: disable=import-outside-toplevel

  quickstart = runpy.run_path(os.path.join(REPO, "configs/quickstart.py"))["get_config"]()
  for name in a.modalities.split(","):
    config = quickstart.stages[f"tok_{name}"]
    config.data.dir = os.path.join(a.workdir, "data")
    mesh = sharding.make_mesh(config.mesh)
    trainer = tokenizer.Trainer(config, mesh)
    data = tokenizer._data_config(config)  # pylint: disable=protected-access
    it = pipeline.make_iterator(data, data.train_split, seed=0, training=True)
    key = modalities.get(name).data_key
    t = time.perf_counter()
    batches = [np.asarray(next(it)[key]) for _ in range(a.steps)]
    loader_s = (time.perf_counter() - t) / a.steps
    x = sharding.to_global(batches[0], mesh, trainer.rules)
    state = trainer.initial
    cost = trainer.train_step.lower(state, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) * len(jax.devices())
    state, metrics = trainer.train_step(state, x)
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    for _ in range(a.steps):
      state, metrics = trainer.train_step(state, x)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t) / a.steps
    print(f"{name}: {len(jax.devices())} device(s), loader {loader_s * 1e3:.0f} ms/batch, step"
          f" {step_s * 1e3:.0f} ms, {flops / 1e9:.1f} GFLOP/step, {flops / step_s / 1e9:.1f}"
          " GFLOP/s", flush=True)


if __name__ == "__main__":
  main()
