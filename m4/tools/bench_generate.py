"""Times generation per sample for each decoding scheme.

    python -m m4.tools.bench_generate --config=configs/pretrain/scenes_tiny.py [--batch=32]
    python -m m4.tools.bench_generate --init=workdirs/pretrain/scenes_tiny

The model is `config.model` with random parameters (speed does not depend on
the weights) or the trained run at `--init`. Inputs: random RGB tokens.
Schemes (each compiled first, timed separately, then run `--repeats` times):
MaskGIT and ROAR for an image target (`--steps` steps), MaskGIT with
classifier-free guidance (its unconditional pass without the given
image's slots), and the caption decoded for its full length or
`--caption_tokens` (no early stop) with and without the key/value cache.
`--full_slots` gives every image step one slot per token
(`Generator(compact=False)`), to measure what the planned slots buy;
`--caption_only` times the caption alone (`--caption_tokens=1`: a call's
fixed cost, the given tokens' encoding and the context's keys and values). Prints a
table and one JSON line per scheme: compile seconds, milliseconds per sample
(median over repeats) and per decoded token.
"""

from __future__ import annotations

import argparse
import json
import runpy
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

from m4 import generation
from m4 import host_memory
from m4 import modalities
from m4.models import configs
from m4.models import pretrained
from m4.models.fourm import FourM
from m4.tools import tiny_checkpoint


def _model(args):
  if args.init:
    return pretrained.load(args.init)
  path, _, arg = args.config.partition(":")
  return random_model(runpy.run_path(path)["get_config"](*([arg] if arg else [])))


def random_model(config) -> FourM:
  """The FourM of `config.model` (modalities from `config.modalities`), random weights."""
  modalities.register_from_config(config.get("modalities"))
  cfg = configs.from_config(config.model)
  return tiny_checkpoint.numpy_init(lambda: FourM(cfg, rngs=nnx.Rngs(0)), 0, lambda _: cfg.dim)


def bench(args, model=None) -> list[dict]:
  """One row per scheme (see the module doc); `model`: instead of args' config / init."""
  model = _model(args) if model is None else model
  gen = generation.Generator(model, compact=not args.full_slots)
  names = model.cfg.decoder_modalities
  source = args.input
  image = next(n for n in names if modalities.get(n).is_image and n != source)
  caption = next((n for n in names if modalities.get(n).is_sequence), None)
  rng = np.random.default_rng(0)
  mod = modalities.get(source)
  state = {source: generation.image_entry(
      source, rng.integers(0, mod.vocab_size, (args.batch, mod.num_tokens)))}
  n_img = modalities.get(image).num_tokens
  cases = [] if args.caption_only else [
      ("maskgit", generation.Step(image, "maskgit", num_steps=args.steps), n_img, True),
      ("roar", generation.Step(image, "roar", num_steps=args.steps), n_img, True),
      ("maskgit + guidance", generation.Step(image, "maskgit", num_steps=args.steps,
                                             cfg_scale=2.0), n_img, True)]
  if caption:
    # Decoding stops early only once every row has drawn its stop sentinel:
    # with random weights every caption runs its full length.
    length = args.caption_tokens or modalities.get(caption).num_tokens
    step = generation.Step(caption, "autoregressive", max_length=length)
    cases += [("autoregressive, cached", step, length, True),
              ("autoregressive, uncached", step, length, False)]
  rows = []
  for label, step, tokens, cache in cases:
    key = jax.random.key(0)
    t0 = time.perf_counter()
    gen.run_step(state, step, key, use_cache=cache)
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(args.repeats):
      t0 = time.perf_counter()
      gen.run_step(state, step, jax.random.fold_in(key, r + 1), use_cache=cache)
      times.append(time.perf_counter() - t0)
    per_sample = statistics.median(times) / args.batch
    rows.append({"scheme": label, "target": step.modality, "batch": args.batch,
                 "steps": step.num_steps if step.scheme != "autoregressive" else tokens,
                 "compile_s": round(compile_s, 2), "ms_per_sample": round(1e3 * per_sample, 3),
                 "ms_per_token": round(1e3 * per_sample / tokens, 4)})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m m4.tools.bench_generate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/pretrain/scenes_tiny.py",
                 help="a pretraining config (its `model`), PATH or PATH:ARG")
  p.add_argument("--init", default="", help="a trained run instead of random parameters")
  p.add_argument("--input", default="rgb", help="the given image modality")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=8, help="MaskGIT / ROAR steps")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--caption_tokens", type=int, default=0,
                 help="caption tokens decoded (0: the modality's num_tokens)")
  p.add_argument("--caption_only", action="store_true",
                 help="time the caption alone, cached and uncached")
  p.add_argument("--full_slots", action="store_true",
                 help="one slot per token at every step (the sampler before its slot plans)")
  args = p.parse_args(argv)
  host_memory.keep_freed_memory()
  rows = bench(args)
  print(f"\n{'scheme':28s} {'ms/sample':>10s} {'ms/token':>9s} {'compile s':>9s}")
  for r in rows:
    print(f"{r['scheme']:28s} {r['ms_per_sample']:10.2f} {r['ms_per_token']:9.3f}"
          f" {r['compile_s']:9.1f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
