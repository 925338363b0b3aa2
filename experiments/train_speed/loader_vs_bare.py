"""The main job's pretraining with its real input pipeline against the bare step.

    python experiments/train_speed/loader_vs_bare.py --workdir=workdirs/quickstart \
        [--steps=200] [--rounds=3] [--breakdown=100] [--num_workers=1] [--cpu_devices=1] \
        [--batched_after]

Issue 16's loader bar: pretraining with its real input pipeline runs at
>= 95 % of the bare step's rate. Builds the `pretrain` stage of
configs/quickstart.py on a finished main-job workdir (its token shards are
read; nothing is written there), compiles the job's training step, then
runs `engine.train_loop`, the job's own loop (its logging every
`log_every` steps included; no checkpoints, no evaluations), alternately
on two batch sources, `rounds` times each:

  real  the job's iterator: shards -> masking -> batches -> placed, per step;
  bare  the iterator's first batch, placed once, every step.

First, before anything is compiled, the loader alone: wall and CPU time
(all threads) per batch over 50 batches. Prints one JSON line per run (steps/s over `steps` steps, the loop's own
clock) and the ratio real / bare of the medians. Both start from the same
state, so the runs do the same arithmetic. `--breakdown=N` then times, over
N steps of each source, where the loop's main thread spends a step.
"""

import argparse
import json
import os
import runpy
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from m4 import host_memory  # noqa: E402
from m4 import sharding  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a finished main-job workdir")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--cpu_devices", type=int, default=0)
  parser.add_argument("--num_workers", type=int, default=None,
                      help="config.data.num_workers (default: the stage's)")
  parser.add_argument("--read_threads", type=int, default=None,
                      help="config.data.read_threads (default: the stage's)")
  parser.add_argument("--batched_after", action="store_true",
                      help="batch after the read, one sample at a time (as before 2026-12-07)")
  parser.add_argument("--breakdown", type=int, default=0,
                      help="then this many steps per source, timing the loop's main thread")
  args = parser.parse_args()
  host_memory.keep_freed_memory()  # As m4.main: before the backend starts.
  sharding.use_cpu_devices(args.cpu_devices)

  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from m4 import engine, modalities, workdir  # pylint: disable=import-outside-toplevel
  from m4.data import pipeline, pretrain_data  # pylint: disable=import-outside-toplevel
  from m4.jobs import pretrain, pretrain_eval, quickstart  # pylint: disable=import-outside-toplevel
  from m4.models import configs, fourm  # pylint: disable=import-outside-toplevel

  config = runpy.run_path(os.path.join(REPO, "configs/quickstart.py"))["get_config"]()
  config = quickstart.stage_config(config, "pretrain", args.workdir)
  for field in ("num_workers", "read_threads"):
    if getattr(args, field) is not None:
      config.data[field] = getattr(args, field)
  if args.batched_after:  # Token shards never skip a sample; this only moves the batching.
    config.data.on_error = "skip"
  print(json.dumps({"num_workers": config.data.num_workers,
                    "read_threads": config.data.read_threads,
                    "batched_ahead": pipeline.batches_ahead(config.data)}), flush=True)
  modalities.register_from_config(config.modalities)
  cfg = configs.from_config(config.model)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding_rules)
  data = pretrain_data.PretrainData(config)
  model = fourm.FourM(cfg, rngs=nnx.Rngs(int(config.seed)))
  tx, schedule = pretrain.make_optimizer(config.optimizer, int(config.total_steps), model)
  state0 = pretrain.init_state(model, tx)
  shardings = engine.train_state_shardings(state0, mesh, rules)
  state0 = jax.device_put(state0, shardings)
  step_fn = pretrain.make_train_step(nnx.graphdef(model), tx, schedule=schedule, mesh=mesh,
                                     rules=rules, state_shardings=shardings)
  train_it = data.train_iterator(seed=int(config.seed))
  place = lambda b: sharding.to_global(pretrain_eval.model_batch(b, data.names), mesh, rules)
  fixed = place(next(train_it))
  for _ in range(5):
    next(train_it)  # The prefetch buffer filled: then the loader's own pace.
  t, cpu = time.perf_counter(), time.process_time()
  for _ in range(50):
    next(train_it)
  print(json.dumps({"loader_alone_ms_per_batch": round((time.perf_counter() - t) * 20, 1),
                    "loader_alone_cpu_ms_per_batch": round((time.process_time() - cpu) * 20, 1)}),
        flush=True)
  t = time.perf_counter()
  fresh = lambda: jax.tree.map(lambda x: x.copy(), state0)  # The step donates its state.
  jax.block_until_ready(step_fn(fresh(), fixed))  # Compiles; both sources share the program.
  print(json.dumps({"compile_s": round(time.perf_counter() - t, 2),
                    "devices": len(jax.devices())}), flush=True)
  sources = {"real": lambda step: place(next(train_it)), "bare": lambda step: fixed}
  rates = {name: [] for name in sources}
  for r in range(args.rounds):
    for name, batches in sources.items():
      with tempfile.TemporaryDirectory() as tmp, workdir.MetricLogger(
          tmp, args.steps, name=f"{name} round {r}", tensorboard=False) as logger:
        state = fresh()
        jax.block_until_ready(state)
        t = time.perf_counter()
        out = engine.train_loop(state, step_fn, batches, start=0, total=args.steps,
                                log_every=int(config.log_every), logger=logger)
        jax.block_until_ready(out.state)
        seconds = time.perf_counter() - t
      rates[name].append(args.steps / seconds)
      print(json.dumps({"round": r, "source": name, "steps": args.steps,
                        "seconds": round(seconds, 2), "steps_per_s": round(rates[name][-1], 3),
                        "loss": round(float(out.logged.get("loss", np.nan)), 4)}), flush=True)
  real, bare = (float(np.median(rates[n])) for n in ("real", "bare"))
  print(json.dumps({"real_steps_per_s": round(real, 3), "bare_steps_per_s": round(bare, 3),
                    "real_over_bare": round(real / bare, 3), "bar": 0.95}), flush=True)
  if args.breakdown:
    for name in sources:
      print(json.dumps(_breakdown(name, fresh(), step_fn, train_it, place, fixed,
                                  args.breakdown)), flush=True)
  if hasattr(train_it, "close"):
    train_it.close()  # Stops grain's worker processes, if any.


def _breakdown(name, state, step_fn, train_it, place, fixed, steps: int) -> dict:
  """ms per step of the loop's main thread: the loader's next(), the batch's
  placement on the mesh, and the step call (which returns once XLA has taken
  the step: on a CPU it waits there for the step before)."""
  import jax  # pylint: disable=import-outside-toplevel
  spent = {"next_ms": 0.0, "place_ms": 0.0, "step_call_ms": 0.0}
  t0 = time.perf_counter()
  for _ in range(steps):
    t = time.perf_counter()
    raw = next(train_it) if name == "real" else None
    t_next = time.perf_counter()
    batch = place(raw) if name == "real" else fixed
    t_place = time.perf_counter()
    state, _ = step_fn(state, batch)
    t_step = time.perf_counter()
    spent["next_ms"] += t_next - t
    spent["place_ms"] += t_place - t_next
    spent["step_call_ms"] += t_step - t_place
  jax.block_until_ready(state)
  total = time.perf_counter() - t0
  return {"source": name, "steps": steps, "ms_per_step": round(total / steps * 1e3, 1),
          **{k: round(v / steps * 1e3, 1) for k, v in spent.items()}}


if __name__ == "__main__":
  main()
