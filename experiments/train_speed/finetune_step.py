"""Times the main job's transfer fine-tuning step: the step, its head, its loader.

    python experiments/train_speed/finetune_step.py --workdir=workdirs/quickstart \
        [--task=semseg] [--heads=upsample,patch] [--cpu_devices=1]

Builds the `transfer` stage of configs/quickstart.py on a finished main-job
workdir (its data/ and pretrain/ are read), then for each dense head: the
pretrained arm's fine-tuning step (compiled first) on placed batches, and
the same step with the loader, the input encoding and the placement inline,
as the job runs it. Prints ms per batch / step. Then, on the process's
devices, forward + backward of a 3x3 convolution at the head's last
resolution, XLA's filter and input gradients alone.
"""

import argparse
import os
import runpy
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from m4 import host_memory  # noqa: E402
from m4 import sharding  # noqa: E402


def _ms(fn, n: int) -> float:
  """Mean ms per call of fn() over n calls (fn returns something to wait on)."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.block_until_ready(fn())
  t = time.perf_counter()
  for _ in range(n):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / n * 1e3


def fine_tuning(workdir: str, task_name: str, head: str, steps: int) -> None:
  import numpy as np  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from m4 import engine  # pylint: disable=import-outside-toplevel
  from m4.data import pipeline, sources, subsets  # pylint: disable=import-outside-toplevel
  from m4.jobs import quickstart  # pylint: disable=import-outside-toplevel
  from m4.jobs import transfer as job  # pylint: disable=import-outside-toplevel
  from m4.jobs import transfer_protocols as protocols  # pylint: disable=import-outside-toplevel
  from m4.models import transfer  # pylint: disable=import-outside-toplevel

  config = runpy.run_path(os.path.join(REPO, "configs/quickstart.py"))["get_config"]()
  config = quickstart.stage_config(config, "transfer", workdir)
  ctx = job._Context(config, "/tmp/finetune_step")  # pylint: disable=protected-access
  task = transfer.TaskSpec.from_config(task_name, config.tasks[task_name])
  settings = protocols.settings(config, task_name, "finetune")
  settings.dense_head = head
  run = job.Run(task, "pretrained", "finetune", 0.1, 0, settings, "test")
  data = job._task_data(config, task)  # pylint: disable=protected-access
  source = subsets.LabelSubset(sources.make_source(data, data.train_split), 0.1, 0)
  it = pipeline.make_iterator(data, data.train_split, seed=0, training=True, source=source)
  inputs = ctx.encoder_inputs(task)
  t = time.perf_counter()
  raw = [next(it) for _ in range(steps)]
  loader_ms = (time.perf_counter() - t) / steps * 1e3
  placed = [(ctx.place(inputs(b)), ctx.place(np.asarray(task.targets(b)))) for b in raw]
  model = job.build_model(ctx, run)
  graphdef, trainable, stats, rest = nnx.split(
      model, transfer.trainable_filter(model, "finetune"), nnx.BatchStat, ...)
  params = nnx.to_pure_dict(trainable)
  tx, _ = protocols.make_optimizer(
      learning_rate=float(settings.learning_rate),
      min_learning_rate=float(settings.min_learning_rate), warmup_steps=10, num_steps=150,
      weight_decay=float(settings.weight_decay), layer_decay=float(settings.layer_decay),
      depth=model.backbone.cfg.encoder_depth, grad_clip=float(settings.grad_clip),
      b1=float(settings.b1), b2=float(settings.b2), decay_rules=model.decay_rules(),
      new_inputs=model.new_inputs)
  state = job.on_mesh(engine.TrainState(step=np.int32(0), params=params,
                                        opt_state=tx.init(params),
                                        extra=nnx.to_pure_dict(stats)), ctx.mesh)
  step_fn = protocols.train_step(graphdef, task, "finetune", tx)
  box = {"state": state, "i": 0}

  def placed_step():
    box["state"], metrics = step_fn(box["state"], (rest, *placed[box["i"] % steps]))
    box["i"] += 1
    return metrics

  def inline_step():
    b = next(it)
    box["state"], metrics = step_fn(
        box["state"], (rest, ctx.place(inputs(b)), ctx.place(np.asarray(task.targets(b)))))
    return metrics

  with sharding.use(ctx.mesh, ctx.rules):
    step_ms = _ms(placed_step, steps)
    inline_ms = _ms(inline_step, steps)
  print(f"{task_name} fine-tuning, head {head}: loader {loader_ms:.1f} ms/batch, step on placed"
        f" batches {step_ms:.1f} ms, with the loader inline {inline_ms:.1f} ms", flush=True)


def convolution(batch: int, size: int, channels: int, steps: int) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  dims = ("NHWC", "HWIO", "NHWC")
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
  x = jax.random.normal(jax.random.key(0), (batch, size, size, channels))
  w = jax.random.normal(jax.random.key(1), (3, 3, channels, channels)) * 0.1
  dy = jax.random.normal(jax.random.key(2), (batch, size, size, channels))
  both = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
  filt = jax.jit(lambda x, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
  inp = jax.jit(lambda w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
  fwd = jax.jit(conv)
  print(f"3x3 convolution, {batch} x {size}^2 x {channels} -> {channels}: forward"
        f" {_ms(lambda: fwd(x, w), steps):.1f} ms, forward + backward"
        f" {_ms(lambda: both(x, w), steps):.1f} ms (filter gradient"
        f" {_ms(lambda: filt(x, dy), steps):.1f} ms, input gradient"
        f" {_ms(lambda: inp(w, dy), steps):.1f} ms)", flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a finished main-job workdir")
  p.add_argument("--task", default="semseg")
  p.add_argument("--heads", default="upsample,patch")
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--cpu_devices", type=int, default=0, help="0: one per core, as m4.main")
  a = p.parse_args()
  host_memory.keep_freed_memory()  # As m4.main.
  sharding.use_cpu_devices(a.cpu_devices)  # Before JAX starts a backend.
  for head in a.heads.split(","):
    fine_tuning(a.workdir, a.task, head, a.steps)
  convolution(32, 64, 16, a.steps)


if __name__ == "__main__":
  main()
