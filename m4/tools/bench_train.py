"""Times steady-state 4M training steps (forward, loss, backward, AdamW).

    python -m m4.tools.bench_train --config=configs/pretrain/bench_tiny.py \
        [--config.batch_size=16] [--config.model.remat=full] [--cpu_devices=1]

The step runs data-parallel over all devices (`config.mesh`, default every
device on the data axis); on a CPU that is one device per core unless
`--cpu_devices` says otherwise (m4.sharding.use_cpu_devices).

Builds the model of `config.model` (modalities from `config.modalities`), a
synthetic masked batch (m4.models.synthetic, `config.bench.alpha`), and the
training step of m4.jobs.pretrain; compiles it (timed separately), runs
`config.bench.warmup` steps, then times `config.bench.steps` steps. Prints
one JSON line: step seconds (median, min, max), tokens/s (encoder + decoder
tokens per sample x batch / median step), CPU seconds per step (all
threads; robust to other jobs sharing the machine), compile seconds, peak
memory (host RSS; on an accelerator also the device's peak), and
the average head vocabulary per target token (the heads' share of the work),
and the step's matmul FLOPs (`train_flops`, from the shapes, and by part:
attention projections, attention scores, MLP, heads; XLA's own count,
which counts a loop body once, beside it) with the model FLOPs utilisation (MFU) against a
stated peak (`config.bench.peak_tflops`, else `peak_tflops()`'s figure for
the device; `peak_source` says which), and the fraction of the matmul wall
measured in the same run (`matmul_wall_tflops`: a 2048^2 product, 8192^2 on
an accelerator, in the model's compute dtype; `config.bench.wall=False`
skips it).
With `config.bench.breakdown=True` it also times the forward pass (loss) and
forward + backward (gradients) alone, so backward = grads - forward and
optimizer = step - grads.
"""

from __future__ import annotations

import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging
from flax import nnx
from ml_collections import config_flags

from m4 import engine
from m4 import host_memory
from m4 import modalities
from m4 import sharding
from m4.models import configs
from m4.models import fourm
from m4.models import synthetic
from m4.jobs import pretrain


def _target_vocab(batch, names):
  """Mean vocabulary size over the decoder targets of the batch."""
  total = count = 0
  for n in names:
    mod = modalities.get(n)
    tgt = batch[n]["target_mask"]
    k = int((tgt[:, :-1] & tgt[:, 1:]).sum()) if mod.is_sequence else int(tgt.sum())
    total += k * mod.vocab_size
    count += k
  return total / max(count, 1)


# Dense peak TFLOP/s by device kind and compute dtype (float32 matmuls run as TF32).
GPU_PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 494.0},
                   "H200": {"bfloat16": 989.0, "float32": 494.0},
                   "A100": {"bfloat16": 312.0, "float32": 156.0}}


def peak_tflops(device, dtype: str) -> tuple[float | None, str]:
  """(peak TFLOP/s, where the figure comes from) of `device` for `dtype` matmuls.

  GPUs: the vendor's dense figure (GPU_PEAK_TFLOPS). CPUs: an estimate, cores
  x clock x FLOPs per cycle per core (fp32 FMA: 64 with AVX-512, 32 with AVX2,
  two FMA units); bf16 is counted at the fp32 rate.
  """
  kind = getattr(device, "device_kind", "")
  for name, peaks in GPU_PEAK_TFLOPS.items():
    if name in kind:
      peak = peaks.get(dtype, peaks["float32"])
      return peak, f"{kind} dense {dtype} datasheet figure"
  if device.platform != "cpu":
    return None, f"no peak known for {kind!r}; pass --config.bench.peak_tflops"
  mhz, cpu_flags = 0.0, ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("cpu MHz"):
          mhz = max(mhz, float(line.split(":")[1]))
        elif line.startswith("flags") and not cpu_flags:
          cpu_flags = line
  except OSError:
    pass
  if not mhz:
    return None, "CPU clock unknown; pass --config.bench.peak_tflops"
  per_cycle = 64 if " avx512f" in cpu_flags else 32
  cores = os.cpu_count() or 1
  return (cores * mhz * 1e6 * per_cycle / 1e12,
          f"estimate: {cores} cores x {mhz / 1e3:.2f} GHz x {per_cycle} fp32 FLOP/cycle")


def matmul_wall_tflops(size: int = 2048, dtype: str = "float32", repeats: int = 10) -> float:
  """The machine's matmul wall, measured now: median TFLOP/s of a jitted
  (size x size) @ (size x size) product in `dtype` on the default device."""
  x = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
  f = jax.jit(lambda a: a @ a)
  times, _ = _time(f, (x,), warmup=2, steps=repeats)
  return 2 * size ** 3 / float(np.median(times)) / 1e12


def train_flops_parts(cfg, batch_size: int, mean_target_vocab: float) -> dict[str, float]:
  """Matmul FLOPs of one training step (forward x 3) by component, from the shapes.

  attention_projections: q, k, v and output projections of self-attention
  (4 D^2 per token and layer), cross-attention's query, output and the
  decoder's key / value projections of the encoder tokens (2 D^2 each per
  decoder / encoder token and decoder layer), and the context projection
  (D^2 per encoder token); attention_scores: QK^T and AV (2 L D per token
  and layer over L keys); mlp: (G + 1) D F per token and layer (G = 2 for a
  gated MLP); heads: D V per target token. Multiply-adds count 2.
  """
  d, f, n, m = cfg.dim, cfg.mlp_hidden, cfg.num_encoder_tokens, cfg.num_decoder_tokens
  le, ld = cfg.encoder_depth, cfg.decoder_depth
  per_sample = {
      "attention_projections": (n * le * 4 * d * d + n * d * d
                                + ld * (m * 6 * d * d + n * 2 * d * d)),
      "attention_scores": n * le * 2 * n * d + ld * m * 2 * (m + n) * d,
      "mlp": (n * le + m * ld) * (3 if cfg.gated else 2) * d * f,
      "heads": m * d * mean_target_vocab,
  }
  return {k: 3 * 2 * batch_size * v for k, v in per_sample.items()}


def train_flops(cfg, batch_size: int, mean_target_vocab: float) -> float:
  """Matmul FLOPs of one training step (forward x 3): the sum of `train_flops_parts`."""
  return sum(train_flops_parts(cfg, batch_size, mean_target_vocab).values())


def _xla_flops(compiled) -> float | None:
  """XLA's FLOP count of one call of a compiled function (a loop body counts once)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def _time(fn, args, warmup: int, steps: int) -> tuple[list[float], float]:
  """(step seconds, compile seconds) of a jitted `fn(*args)`."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  return times, compile_s


def bench(config) -> dict:
  modalities.register_from_config(config.get("modalities"))
  cfg = configs.from_config(config.model)
  model = fourm.FourM(cfg, rngs=nnx.Rngs(config.seed))
  tx, schedule = pretrain.make_optimizer(config.optimizer, config.total_steps, model)
  state = pretrain.init_state(model, tx)
  names = list(dict.fromkeys(cfg.encoder_modalities + cfg.decoder_modalities))
  batch = synthetic.masked_batch(names, config.batch_size, cfg.num_encoder_tokens,
                                 cfg.num_decoder_tokens, seed=config.seed,
                                 alpha=config.bench.alpha,
                                 input_names=cfg.encoder_modalities,
                                 target_names=cfg.decoder_modalities)
  vocab = _target_vocab(batch, cfg.decoder_modalities)
  mesh = sharding.make_mesh(config.get("mesh"))
  state_shardings = engine.train_state_shardings(state, mesh)
  state = jax.device_put(state, state_shardings)
  step = pretrain.make_train_step(nnx.graphdef(model), tx, schedule=schedule, mesh=mesh,
                                  state_shardings=state_shardings)
  batch = sharding.to_global(batch, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(config.bench.warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  times, cpu = [], []
  for _ in range(config.bench.steps):
    t, c = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  median = float(np.median(times))
  tokens = config.batch_size * (cfg.num_encoder_tokens + cfg.num_decoder_tokens)
  parts = {}
  if config.bench.breakdown:
    graphdef = nnx.graphdef(model)
    loss = lambda p, b: nnx.merge(graphdef, p)(b)[0]
    for name, fn in (("forward", loss), ("forward_backward", jax.grad(loss))):
      with sharding.use(mesh):  # Traced as the step is: activations split by their names.
        t, _ = _time(fn, (state.params, batch), config.bench.warmup, config.bench.steps)
      parts[f"{name}_s_median"] = round(float(np.median(t)), 4)
    parts["backward_s"] = round(parts["forward_backward_s_median"] - parts["forward_s_median"], 4)
    parts["optimizer_s"] = round(median - parts["forward_backward_s_median"], 4)
  flops_parts = train_flops_parts(cfg, config.batch_size, vocab)
  flops = sum(flops_parts.values())
  xla_flops = _xla_flops(compiled)
  peak, peak_source = peak_tflops(jax.devices()[0], cfg.dtype)
  if config.bench.get("peak_tflops"):
    peak, peak_source = float(config.bench.peak_tflops), "config.bench.peak_tflops"
  achieved = flops / median / 1e12 if flops else None
  wall_size = 2048 if jax.default_backend() == "cpu" else 8192  # A GPU needs more work to time.
  wall = (matmul_wall_tflops(wall_size, cfg.dtype) if config.bench.get("wall", True) else None)
  mem = compiled.memory_analysis()
  device_stats = jax.devices()[0].memory_stats() or {}  # None on a CPU.
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  return {
      "step_s_median": round(median, 4), "step_s_min": round(min(times), 4),
      "step_s_max": round(max(times), 4), "tokens_per_s": round(tokens / median, 1),
      "step_cpu_s_median": round(float(np.median(cpu)), 4),
      "compile_s": round(compile_s, 2),
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "step_temp_mb": round(getattr(mem, "temp_size_in_bytes", 0) / 2**20, 1) if mem else None,
      "device_peak_mb": (round(device_stats["peak_bytes_in_use"] / 2**20, 1)
                         if "peak_bytes_in_use" in device_stats else None),
      "params_m": round(n_params / 1e6, 2), "batch_size": config.batch_size,
      "tokens_per_step": tokens, "mean_target_vocab": round(vocab, 1),
      "loss": round(float(metrics["loss"]), 4), "steps_timed": len(times),
      "load_avg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
      "backend": jax.default_backend(), "devices": len(jax.devices()),
      "gflops_per_step": round(flops / 1e9, 3),
      "gflops_by_part": {k: round(v / 1e9, 3) for k, v in flops_parts.items()},
      "xla_gflops_per_step": round(xla_flops / 1e9, 3) if xla_flops else None,
      "tflops_per_s": _significant(achieved) if achieved else None,
      "peak_tflops": round(peak, 3) if peak else None, "peak_source": peak_source,
      "mfu": _significant(achieved / peak) if achieved and peak else None,
      "wall_tflops": _significant(wall) if wall else None,
      "fraction_of_wall": _significant(achieved / wall) if achieved and wall else None, **parts,
  }


def _significant(x: float, digits: int = 4) -> float:
  """`x` to `digits` significant figures (rates of tiny test models stay exact enough)."""
  return float(f"{x:.{digits}g}")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  print(json.dumps(bench(flags.FLAGS.config)), flush=True)


def run():
  config_flags.DEFINE_config_file("config", None, "A config file with get_config().")
  flags.DEFINE_integer("cpu_devices", 0, "XLA devices on the host CPU (m4.sharding."
                       "use_cpu_devices); 0: one per core, 1: one device.")
  app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv):
  rest = flags.FLAGS(argv)
  host_memory.keep_freed_memory()  # Both before the backend starts.
  sharding.use_cpu_devices(flags.FLAGS.cpu_devices)
  return rest


if __name__ == "__main__":
  run()
