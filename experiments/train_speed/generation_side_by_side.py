"""Times generation in the reference 4M's sampler (apple/ml-4m) and in m4, one machine, one run.

    pip install torch==2.13.0 && git clone https://github.com/apple/ml-4m /tmp/ml-4m
    python experiments/train_speed/generation_side_by_side.py --ml4m=/tmp/ml-4m

The model is side_by_side.py's (configs/pretrain/bench_tiny.py's shape: 4+4
blocks, width 256, 4 heads, SwiGLU without biases, float32), with random
weights on both sides (speed does not depend on them). Given: the RGB tokens
of a batch of 32. Timed per scheme, the reference's
`fourm.models.generate.GenerationSampler` under torch.no_grad and m4's
`m4.tools.bench_generate.bench` (jitted; compile time excluded, reported
apart):
- MaskGIT, 8 steps, cosine token schedule, rgb -> depth (64 tokens);
- ROAR, 8 steps (8 tokens each), rgb -> depth;
- MaskGIT with classifier-free guidance (scale 2), rgb -> depth;
- the caption, autoregressive, `--caption_tokens` tokens (32; no early stop
  on either side): the reference decodes without a cache (it has none); m4
  with its key/value cache, and without it for the cache's own ratio.
Rounds alternate reference and m4, so machine drift hits both. By default
both sides run in this process, so they share its allocator
(m4.host_memory's, or glibc's default with --system_malloc); --apart runs
each side of each round in a process of its own with the allocator its
users get (the reference glibc's default, m4 m4.host_memory's). Per-round JSON
lines, then a summary (medians over rounds, milliseconds per sample, ratios
reference / m4; the bars: >= 2 per scheme), go to stdout.

No ml-4m code lives here: `fourm` is imported from --ml4m as in
side_by_side.py; the sampler's `fourm.utils` imports (the sentinel helpers of
its text tokenizer and its schedules) are loaded from their own files. The
reference's caption step ends by merging the decoded ids into its text
(`merge_sequences_batched`, which needs its text tokenizer); that merge is
skipped, so its time is the decoding alone.
"""

import argparse, json, os, random, runpy, statistics, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import side_by_side as sbs  # noqa: E402  (this folder's training comparison)

import jax, torch  # noqa: E402
from m4 import host_memory  # noqa: E402
from m4 import modalities  # noqa: E402
from m4.tools import bench_generate  # noqa: E402

SOURCE, IMAGE, CAPTION = "rgb_bench", "depth_bench", "caption_bench"


def reference_sampler(ml4m, config):
  """(GenerationSampler of the reference model, fourm.models.generate)."""
  model = sbs.reference_model(ml4m, config).eval()
  for name, info in model.modality_info.items():  # The sampler reads each one's length.
    info["max_tokens"] = config.modalities[name].num_tokens
  utils = sys.modules["fourm.utils"]  # side_by_side's stub package.
  from fourm.utils.tokenizer import text_tokenizer  # pylint: disable=import-outside-toplevel
  utils.get_sentinel_to_id_mapping = text_tokenizer.get_sentinel_to_id_mapping
  utils.merge_span_masking = text_tokenizer.merge_span_masking
  from fourm.models import generate  # pylint: disable=import-outside-toplevel
  sampler = generate.GenerationSampler(model)
  sampler.merge_sequences_batched = lambda mod_dict, out, *a, **k: out  # Decoding only.
  return sampler, generate


def reference_cases(sampler, generate, batch, steps, caption_tokens):
  """{scheme: a function of the round's seed that runs it once}."""
  rng = torch.Generator().manual_seed(0)
  vocab = modalities.get(SOURCE).vocab_size
  info = sampler.model.modality_info

  def state(target, num_tokens):
    # All given (the reference's masks: True = not selected). Its init_full_input_modality
    # would read any "rgb*" name as pixels.
    d = {SOURCE: {"tensor": torch.randint(0, vocab, (batch, 64), generator=rng),
                  "input_mask": torch.zeros(batch, 64, dtype=torch.bool),
                  "target_mask": torch.ones(batch, 64, dtype=torch.bool)}}
    return generate.init_empty_target_modality(d, info, target, batch, num_tokens, "cpu")

  def schedule(scheme, cfg_scale):
    return generate.build_chained_generation_schedules(
        cond_domains=[SOURCE], target_domains=[IMAGE], tokens_per_target=[64],
        autoregression_schemes=[scheme], decoding_steps=[steps],
        token_decoding_schedules=["cosine" if scheme == "maskgit" else "linear"],
        temps=[1.0], temp_schedules=["constant"], cfg_scales=[cfg_scale],
        cfg_schedules=["constant"])

  image, caption = state(IMAGE, 64), state(CAPTION, caption_tokens + 1)
  cases = {}
  for label, scheme, scale in (("maskgit", "maskgit", 1.0), ("roar", "roar", 1.0),
                               ("maskgit + guidance", "maskgit", 2.0)):
    cases[label] = (lambda s, sch=schedule(scheme, scale): sampler.generate(image, sch, seed=s))

  def decode_caption(seed):
    torch.manual_seed(seed)
    out = sampler.autoregressive_step_batched(
        {k: dict(v) for k, v in caption.items()}, CAPTION, temperature=1.0, top_k=0.0,
        top_p=0.0, use_eos=False)
    assert out.shape == (batch, caption_tokens + 1), out.shape  # [S_1] + the decoded tokens.
    return out
  cases["autoregressive (reference: no cache)"] = decode_caption
  return cases


def time_reference(cases, repeats, batch):
  """{scheme: median milliseconds per sample} over `repeats` runs after one warm-up."""
  out = {}
  with torch.no_grad():
    for label, fn in cases.items():
      fn(0)
      times = []
      for r in range(repeats):
        t = time.perf_counter()
        fn(r + 1)
        times.append(time.perf_counter() - t)
      out[label] = 1e3 * statistics.median(times) / batch
  return out


def _rounds_in_process(a, config):
  """`a.rounds` rounds in this process (one allocator for both sides); with
  `--side`, that side only."""
  modalities.register_from_config(config.get("modalities"))
  model = bench_generate.random_model(config) if a.side != "reference" else None
  if a.side != "m4":
    sampler, generate = reference_sampler(a.ml4m, config)
    cases = reference_cases(sampler, generate, a.batch, a.steps, a.caption_tokens)
  m4_args = argparse.Namespace(input=SOURCE, batch=a.batch, steps=a.steps, repeats=a.repeats,
                               caption_tokens=a.caption_tokens, full_slots=False,
                               caption_only=False)
  sbs.log(f"reference: torch {torch.__version__}, {torch.get_num_threads()} threads;"
          f" m4: jax {jax.__version__}; batch {a.batch}")
  rounds = []
  for r in range(a.first_round, a.first_round + a.rounds):
    random.seed(r)
    row = {"round": r + 1}
    if a.side != "m4":
      sbs.log(f"round {r + 1}/{a.rounds}: reference ...")
      ref = time_reference(cases, a.repeats, a.batch)
      sbs.log("  " + ", ".join(f"{k} {v:.1f} ms" for k, v in ref.items()))
      row["reference_ms_per_sample"] = {k: round(v, 3) for k, v in ref.items()}
    if a.side != "reference":
      sbs.log(f"round {r + 1}/{a.rounds}: m4 ...")
      rows = {x["scheme"]: x for x in bench_generate.bench(m4_args, model=model)}
      row["m4_ms_per_sample"] = {k: x["ms_per_sample"] for k, x in rows.items()}
      row["m4_compile_s"] = {k: x["compile_s"] for k, x in rows.items()}
    row["load_avg_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(row), flush=True)
    rounds.append(row)
  return rounds


def _apart_round(a, r):
  """One round with each side in its own process and allocator (`--apart`)."""
  row = {"round": r + 1}
  for side, flags in (("reference", ["--system_malloc"]), ("m4", [])):
    cmd = [sys.executable, os.path.abspath(__file__), f"--ml4m={a.ml4m}", f"--side={side}",
           "--rounds=1", f"--repeats={a.repeats}", f"--batch={a.batch}", f"--steps={a.steps}",
           f"--caption_tokens={a.caption_tokens}", f"--threads={a.threads}",
           f"--first_round={r}"] + flags + (
               ["--tiny"] if a.tiny else [])
    sbs.log(f"round {r + 1}/{a.rounds}: {side} in its own process ...")
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    rounds = [json.loads(x) for x in out.splitlines() if x.startswith('{"round"')]
    row.update({k: v for k, v in rounds[-1].items() if k != "round"})
  row["malloc"] = {"reference": "glibc default", "m4": "m4.host_memory"}
  print(json.dumps(row), flush=True)
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ml4m", required=True, help="path of an apple/ml-4m checkout")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=8, help="MaskGIT / ROAR steps")
  p.add_argument("--caption_tokens", type=int, default=32)
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: os.cpu_count())")
  p.add_argument("--tiny", action="store_true", help="a tiny shape, for a smoke test")
  p.add_argument("--system_malloc", action="store_true",
                 help="glibc's default malloc; otherwise m4.host_memory's, as m4.main sets it"
                      " (the process's: both sides get it)")
  p.add_argument("--apart", action="store_true",
                 help="each round runs each side in a process of its own, with the allocator"
                      " its users get: the reference glibc's default, m4 m4.host_memory's")
  p.add_argument("--side", choices=("both", "reference", "m4"), default="both",
                 help="time one side only, no summary (what --apart runs)")
  p.add_argument("--first_round", type=int, default=0, help="the first round's index (its seed)")
  a = p.parse_args()
  if a.apart and (a.side != "both" or a.system_malloc):
    p.error("--apart picks each side's allocator and runs both sides")
  if not a.system_malloc:
    host_memory.keep_freed_memory()
  torch.set_num_threads(a.threads or os.cpu_count())
  config = runpy.run_path(os.path.join(sbs.REPO, "configs/pretrain/bench_tiny.py"))["get_config"]()
  if a.tiny:
    config.model.update(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2)
    for name, vocab in zip(config.model.encoder_modalities, (512, 256, 128, 1024)):
      config.modalities[name].vocab_size = vocab
  if a.apart:
    rounds = [_apart_round(a, r) for r in range(a.rounds)]
  else:
    rounds = _rounds_in_process(a, config)
  if a.side != "both":
    return

  def med(side, key):
    return statistics.median(x[side][key] for x in rounds)
  pairs = {"maskgit": ("maskgit", "maskgit"), "roar": ("roar", "roar"),
           "maskgit + guidance": ("maskgit + guidance", "maskgit + guidance"),
           "caption": ("autoregressive (reference: no cache)", "autoregressive, cached")}
  summary = {name: {"reference_ms": round(med("reference_ms_per_sample", ref), 3),
                    "m4_ms": round(med("m4_ms_per_sample", ours), 3),
                    "ratio_reference_over_m4": round(med("reference_ms_per_sample", ref)
                                                     / med("m4_ms_per_sample", ours), 2)}
             for name, (ref, ours) in pairs.items()}
  cached, uncached = (med("m4_ms_per_sample", k) for k in
                      ("autoregressive, cached", "autoregressive, uncached"))
  print(json.dumps({
      "per_scheme": summary, "bar": ">= 2 (ratio_reference_over_m4, each scheme)",
      "m4_caption_cache_speedup": round(uncached / cached, 2), "cache_bar": ">= 5",
      "batch": a.batch, "steps": a.steps, "caption_tokens": a.caption_tokens,
      "rounds": a.rounds, "repeats": a.repeats, "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(), "jax": jax.__version__, "cpus": os.cpu_count(),
      "load_avg": [round(x, 2) for x in os.getloadavg()], "tiny": a.tiny,
      "malloc": ("apart: reference glibc default, m4 m4.host_memory" if a.apart else
                 "glibc default, both" if a.system_malloc else "m4.host_memory, both")}),
        flush=True)


if __name__ == "__main__":
  main()
