"""Times steady-state 4M training steps (forward, loss, backward, AdamW).

    python -m m4.tools.bench_train --config=configs/pretrain/bench_tiny.py \
        [--config.batch_size=16] [--config.model.remat=full]

Builds the model of `config.model` (modalities from `config.modalities`), a
synthetic masked batch (m4.models.synthetic, `config.bench.alpha`), and the
training step of m4.trainers.pretrain; compiles it (timed separately), runs
`config.bench.warmup` steps, then times `config.bench.steps` steps. Prints
one JSON line: step seconds (median, min, max), tokens/s (encoder + decoder
tokens per sample x batch / median step), compile seconds, peak memory, and
the average head vocabulary per target token (the heads' share of the work).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np


def _target_vocab(batch, names):
  """Mean vocabulary size over the decoder targets of the batch."""
  from m4 import modalities  # pylint: disable=g-import-not-at-top
  total = count = 0
  for n in names:
    mod = modalities.get(n)
    tgt = batch[n]["target_mask"]
    k = int((tgt[:, :-1] & tgt[:, 1:]).sum()) if mod.is_sequence else int(tgt.sum())
    total += k * mod.vocab_size
    count += k
  return total / max(count, 1)


def bench(config) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from m4 import modalities  # pylint: disable=g-import-not-at-top
  from m4.models import configs  # pylint: disable=g-import-not-at-top
  from m4.models import fourm  # pylint: disable=g-import-not-at-top
  from m4.models import synthetic  # pylint: disable=g-import-not-at-top
  from m4.trainers import pretrain  # pylint: disable=g-import-not-at-top

  modalities.register_from_config(config.get("modalities"))
  cfg = configs.from_config(config.model)
  model = fourm.FourM(cfg, rngs=nnx.Rngs(config.seed))
  tx, schedule = pretrain.make_optimizer(config.optimizer, config.total_steps, model)
  state = pretrain.init_state(model, tx)
  step = pretrain.make_train_step(nnx.graphdef(model), tx, schedule=schedule)
  names = list(dict.fromkeys(cfg.encoder_modalities + cfg.decoder_modalities))
  batch = synthetic.masked_batch(names, config.batch_size, cfg.num_encoder_tokens,
                                 cfg.num_decoder_tokens, seed=config.seed,
                                 alpha=config.bench.alpha,
                                 input_names=cfg.encoder_modalities,
                                 target_names=cfg.decoder_modalities)
  vocab = _target_vocab(batch, cfg.decoder_modalities)
  batch = jax.device_put(batch)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(config.bench.warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(config.bench.steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t)
  median = float(np.median(times))
  tokens = config.batch_size * (cfg.num_encoder_tokens + cfg.num_decoder_tokens)
  mem = compiled.memory_analysis()
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  return {
      "step_s_median": round(median, 4), "step_s_min": round(min(times), 4),
      "step_s_max": round(max(times), 4), "tokens_per_s": round(tokens / median, 1),
      "compile_s": round(compile_s, 2),
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "step_temp_mb": round(getattr(mem, "temp_size_in_bytes", 0) / 2**20, 1) if mem else None,
      "params_m": round(n_params / 1e6, 2), "batch_size": config.batch_size,
      "tokens_per_step": tokens, "mean_target_vocab": round(vocab, 1),
      "loss": round(float(metrics["loss"]), 4), "steps_timed": len(times),
      "load_avg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
      "backend": jax.default_backend(),
  }


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  del argv
  logging.set_verbosity(logging.WARNING)
  print(json.dumps(bench(flags.FLAGS.config)), flush=True)


def run():
  from absl import app  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "A config file with get_config().")
  app.run(main)


if __name__ == "__main__":
  run()
