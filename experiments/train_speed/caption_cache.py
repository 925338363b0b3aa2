"""Times m4's caption decoding with and without the key/value cache, by length.

    python experiments/train_speed/caption_cache.py 1 32 256

bench_tiny's model (random weights), the RGB tokens of a batch of 32 given,
`caption_bench` decoded for each length (no early stop), cached and
uncached; milliseconds per call (the whole batch), the median of 3 after a
compiling call. A length of 1 is the call's fixed cost (encoding the given
tokens, the context's keys and values, one token). Run it in a worktree of
another commit (PYTHONPATH=that tree) for a before / after.
"""

import statistics
import sys
import time

import jax
import numpy as np

from m4 import config_files
from m4 import generation
from m4 import host_memory
from m4 import modalities
from m4.tools import bench_generate



def main(lengths):
  host_memory.keep_freed_memory()
  config = config_files.load(__file__, "../../configs/pretrain/bench_tiny.py").get_config()
  gen = generation.Generator(bench_generate.random_model(config))
  rgb = modalities.get("rgb_bench")
  tokens = np.random.default_rng(0).integers(0, rgb.vocab_size, (32, rgb.num_tokens))
  state = {"rgb_bench": generation.image_entry("rgb_bench", tokens)}
  for n in lengths:
    step = generation.Step("caption_bench", "autoregressive", max_length=n)
    for cache in (True, False):
      key = jax.random.key(0)
      gen.run_step(state, step, key, use_cache=cache)  # Compiles.
      times = []
      for r in range(3):
        t0 = time.perf_counter()
        gen.run_step(state, step, jax.random.fold_in(key, r), use_cache=cache)
        times.append(time.perf_counter() - t0)
      ms = 1e3 * statistics.median(times)
      print(f"{n:4d} tokens  {'cached  ' if cache else 'uncached'}  {ms:8.1f} ms per call"
            f"  {ms / n:7.2f} ms per token", flush=True)


if __name__ == "__main__":
  main([int(a) for a in sys.argv[1:]] or [1, 32])
