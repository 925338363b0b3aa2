"""Times m4.generation.sample alone at the sampler's shapes (ms per call, medians).

    python experiments/train_speed/sampling_draws.py

Rows: a MaskGIT step's first (32 x 64 tokens) and a late (32 x 8) draw at the
depth vocabulary (8192), and one caption token (32 x 1 at 30000); each at
temperature 1 and 0.5 (static), 1 traced (the fori_loop's case) and greedy.
"""

import statistics

import jax
import jax.numpy as jnp

from m4 import generation, host_memory
from m4.tools import bench_train


def median_ms(fn, *args, repeats=20):
  """Median ms per call of jitted `fn(*args)` after one warm-up (bench_train's timer)."""
  times, _ = bench_train._time(fn, args, warmup=1, steps=repeats)
  return round(1e3 * statistics.median(times), 2)


def main():
  host_memory.keep_freed_memory()
  key = jax.random.key(0)
  for vocab, tokens in ((8192, 64), (8192, 8), (30000, 1)):
    logits = 3 * jax.random.normal(key, (32, tokens, vocab))
    uniform = jax.random.uniform(key, (32, tokens))
    row = {f"t={t}": median_ms(jax.jit(lambda x, u, t=t: generation.sample(x, u, t)), logits, uniform)
           for t in (1.0, 0.5, 0.0)}
    row["t=1 traced"] = median_ms(jax.jit(generation.sample), logits, uniform, jnp.float32(1.0))
    print(f"(32, {tokens}, {vocab}):", row)


if __name__ == "__main__":
  main()
