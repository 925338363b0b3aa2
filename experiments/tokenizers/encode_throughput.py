"""Encode / decode throughput of the trained VQ tokenizers (images/s, batch 256).

    python experiments/tokenizers/encode_throughput.py --data workdirs/data/scenes64

Loads vq_rgb, vq_depth and vq_semseg through `m4.tokenizers.load` (the search
path: $M4_TOKENIZERS or workdirs/tokenizers), takes 256 validation images,
and times `encode` (input checks + jitted encoder) and `decode` after one
warm-up call. Reports the median of `--repeats` timed calls and the machine's
load average, since the CPU may be shared.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from m4 import tokenizers  # pylint: disable=g-import-not-at-top,wrong-import-position
from m4.data import scenes  # pylint: disable=g-import-not-at-top,wrong-import-position


def _time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="workdirs/data/scenes64")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  source = scenes.ScenesSource(args.data, "validation")
  samples = [source[i % len(source)] for i in range(args.batch)]
  print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
  for name in ("rgb", "depth", "semseg"):
    tok = tokenizers.load(f"vq_{name}")
    x = np.stack([s[name] for s in samples])
    tokens = tok.encode(x)
    enc = _time(lambda: tok.encode(x), args.repeats)  # pylint: disable=cell-var-from-loop
    dec = _time(lambda: tok.decode(tokens), args.repeats)  # pylint: disable=cell-var-from-loop
    print(f"vq_{name}: encode {args.batch / enc:7.0f} images/s ({enc * 1e3:.0f} ms/batch),"
          f" decode {args.batch / dec:7.0f} images/s ({dec * 1e3:.0f} ms/batch)")
  print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
