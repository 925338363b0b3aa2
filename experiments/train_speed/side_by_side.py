"""Times the reference PyTorch 4M (apple/ml-4m) and m4 on one machine, in one run.

    pip install torch==2.13.0 && git clone https://github.com/apple/ml-4m /tmp/ml-4m
    python experiments/train_speed/side_by_side.py --ml4m=/tmp/ml-4m

Uses the shape of configs/pretrain/bench_tiny.py: 4+4 blocks, width 256, 4 heads,
SwiGLU without biases (4M's `fm_*_swiglu_nobias` recipe), float32, tied heads,
loss 'mod'. Both models train on the same batch: m4.models.synthetic's (the one
m4.tools.bench_train times, same seed and Dirichlet alpha), handed to the
reference with its masks flipped (True = not selected), so every sample has the
same tokens per modality on both sides. Rounds alternate reference and m4, so
machine drift hits both. Reference: forward + loss + backward per step (the
issue's figure), and the same plus clip_grad_norm_ and torch.optim.AdamW.step
(m4's step: clipping + AdamW). m4: bench_train.bench's `step_s_median` (with
AdamW) and `forward_backward_s_median`, data-parallel over one CPU device per
core as m4.main runs it (`--cpu_devices=1`: one device, the figures before
2026-12-05). Per-round JSON lines, then a summary
line (medians over rounds), go to stdout; progress to stderr.

No ml-4m code lives here: `fourm` is imported from --ml4m. The reference needs
torch, einops and huggingface_hub; fourm.utils' and fourm.data's package
__init__s (torchvision, webdataset, diffusers, ...) are bypassed: only
fourm.models.{fm, fm_utils, encoder_embeddings, decoder_embeddings} and
fourm.utils.timm.registry are loaded. `--tiny` is a seconds-long smoke test.

On a GPU (`--device=cuda`, with jax[cuda12] and a CUDA torch): the
reference runs on the GPU, in bfloat16 autocast where the config's model
dtype is bfloat16 (as ml-4m trains), and m4 on JAX's default device; JAX does
not preallocate, so both fit in one process. `--config` picks the shape
(configs/pretrain/bench_4m_b.py: 4M-B; experiments/train_speed/gpu.md).
"""

import argparse, copy, json, os, random, runpy, statistics, sys, time, types
from functools import partial

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax, torch  # noqa: E402
from m4 import host_memory  # noqa: E402
from m4 import modalities  # noqa: E402
from m4 import sharding  # noqa: E402
from m4.models import configs  # noqa: E402
from m4.models import synthetic  # noqa: E402
from m4.tools import bench_train  # noqa: E402


def log(msg):
  print(msg, file=sys.stderr, flush=True)


def import_fourm(path):
  """fourm.models.fm etc. from a checkout, skipping fourm.utils / fourm.data's __init__."""
  sys.path.insert(0, os.path.abspath(path))
  for pkg in ("fourm.utils", "fourm.data"):
    stub = types.ModuleType(pkg)
    stub.__path__ = [os.path.join(os.path.abspath(path), *pkg.split("."))]
    sys.modules[pkg] = stub
  info = sys.modules["fourm.data.modality_info"] = types.ModuleType("fourm.data.modality_info")
  info.MODALITY_INFO = {}  # fm.py imports it; FourM gets its own modality_info below.
  from fourm.models import fm, fm_utils, encoder_embeddings as ee, decoder_embeddings as de
  # fm.py shuffles the decoder's modality order with random.sample(dict.items(), k),
  # which Python >= 3.11 rejects; draw from a tuple, as Python <= 3.10 did.
  fm.random = types.SimpleNamespace(sample=lambda pop, k: random.sample(tuple(pop), k))
  return fm, fm_utils, ee, de


def reference_model(ml4m, config):
  """The reference FourM with the config's (or --tiny's) sizes and modalities."""
  fm, fm_utils, ee, de = import_fourm(ml4m)
  enc, dec, info = {}, {}, {}
  for i, name in enumerate(config.model.encoder_modalities):
    m = config.modalities[name]
    if m.kind == "sequence":
      enc[name] = ee.SequenceEncoderEmbedding(vocab_size=m.vocab_size, max_length=m.num_tokens)
      dec[name] = de.SequenceDecoderEmbedding(vocab_size=m.vocab_size, max_length=m.num_tokens)
    else:
      size = m.grid[0] * 16
      enc[name] = ee.ImageTokenEncoderEmbedding(vocab_size=m.vocab_size, patch_size=16, image_size=size)
      dec[name] = de.ImageTokenDecoderEmbedding(vocab_size=m.vocab_size, patch_size=16, image_size=size)
    info[name] = dict(id=i, type="seq" if m.kind == "sequence" else "img")
  c = configs.from_config(config.model)  # A `size` preset resolved.
  torch.manual_seed(config.seed)
  return fm.FourM(  # fm_base_12e_12d_swiglu_nobias's arguments, the config's sizes.
      encoder_embeddings=enc, decoder_embeddings=dec, modality_info=info, dim=c.dim,
      encoder_depth=c.encoder_depth, decoder_depth=c.decoder_depth, num_heads=c.num_heads,
      mlp_ratio=4, qkv_bias=False, proj_bias=False, mlp_bias=False,
      norm_layer=partial(fm_utils.LayerNorm, eps=1e-6, bias=False), act_layer=torch.nn.SiLU,
      gated_mlp=True)


def _sync(device):
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def time_reference(model, mod_dict, config, opt, warmup, steps, device):
  """(median step seconds, last loss) of forward + loss + backward [+ clip + AdamW]."""
  c = config.model
  autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=c.get("dtype") == "bfloat16")
  times = []
  for i in range(warmup + steps):
    _sync(device)
    t = time.perf_counter()
    with autocast:
      loss, _ = model({k: dict(v) for k, v in mod_dict.items()}, c.num_encoder_tokens,
                      c.num_decoder_tokens, loss_type="mod")
    loss.backward()
    if opt is not None:
      torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.clip_norm)
      opt.step()
    model.zero_grad(set_to_none=True)
    _sync(device)
    if i >= warmup:
      times.append(time.perf_counter() - t)
  return statistics.median(times), loss.item()


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ml4m", required=True, help="path of an apple/ml-4m checkout")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: os.cpu_count())")
  p.add_argument("--tiny", action="store_true", help="a tiny shape, for a smoke test")
  p.add_argument("--config", default="configs/pretrain/bench_tiny.py",
                 help="the shape: a bench config, relative to the repository")
  p.add_argument("--device", default="cpu", help="the reference's torch device (cpu, cuda)")
  p.add_argument("--cpu_devices", type=int, default=0,
                 help="m4's CPU devices (0: one per core, as m4.main; 1: one device)")
  p.add_argument("--system_malloc", action="store_true",
                 help="glibc's default malloc; otherwise m4.host_memory's, as m4.main sets it"
                      " (the process's: both sides get it)")
  a = p.parse_args()
  if not a.system_malloc:
    host_memory.keep_freed_memory()
  sharding.use_cpu_devices(a.cpu_devices)  # Both before JAX starts a backend.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # Leaves torch its GPU memory.
  torch.set_num_threads(a.threads or os.cpu_count())
  device = torch.device(a.device)
  config = runpy.run_path(os.path.join(REPO, a.config))["get_config"]()
  if a.tiny:
    config.batch_size = 4
    config.model.update(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                        num_encoder_tokens=16, num_decoder_tokens=16)
    for name, vocab in zip(config.model.encoder_modalities, (512, 256, 128, 1024)):
      config.modalities[name].vocab_size = vocab
  config.bench.update(steps=a.steps, warmup=a.warmup, breakdown=True)
  c = config.model
  names = list(c.encoder_modalities)  # rgb, depth, semseg, caption: inputs and targets.
  assert names == list(c.decoder_modalities) and set(names) == set(config.modalities)

  # The batch bench_train.bench builds, in the reference's convention.
  modalities.register_from_config(config.modalities)
  batch = synthetic.masked_batch(names, config.batch_size, c.num_encoder_tokens,
                                 c.num_decoder_tokens, seed=config.seed, alpha=config.bench.alpha)
  mod_dict = {n: {k: v.to(device) for k, v in dict(
                  tensor=torch.from_numpy(d["tensor"]).long(),
                  input_mask=torch.from_numpy(~d["input_mask"]),
                  target_mask=torch.from_numpy(~d["target_mask"]),
                  decoder_attention_mask=torch.from_numpy(d["decoder_attention_mask"]).long()).items()}
              for n, d in batch.items()}
  # Per modality: inputs and decoder tokens (a caption's k targets feed k - 1) in the batch.
  per_mod = {n: [int(d["input_mask"].sum()), int((d["target_mask"][:, :-1] & d["target_mask"][:, 1:]).sum()
                  if config.modalities[n].kind == "sequence" else d["target_mask"].sum())]
             for n, d in batch.items()}
  model = reference_model(a.ml4m, config).to(device).train()
  o = config.optimizer
  opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps,
                          weight_decay=o.weight_decay)
  tokens = config.batch_size * (c.num_encoder_tokens + c.num_decoder_tokens)
  log(f"reference: {sum(x.numel() for x in model.parameters()) / 1e6:.2f}M parameters, "
      f"torch {torch.__version__}, {torch.get_num_threads()} threads; {tokens} tokens per step")

  rounds = []
  for r in range(a.rounds):
    random.seed(r)
    log(f"round {r + 1}/{a.rounds}: reference forward + backward ...")
    ref_fb, ref_loss = time_reference(model, mod_dict, config, None, a.warmup, a.steps, device)
    log(f"  {ref_fb:.4f} s; reference with AdamW ...")
    ref_opt, _ = time_reference(model, mod_dict, config, opt, a.warmup, a.steps, device)
    log(f"  {ref_opt:.4f} s; m4 (bench_train.bench) ...")
    cfg = copy.deepcopy(config)
    cfg.bench.wall = r == 0
    out = bench_train.bench(cfg)
    row = dict(round=r + 1, ref_fwd_bwd_s=round(ref_fb, 4), ref_adamw_s=round(ref_opt, 4),
               m4_step_s=out["step_s_median"], m4_fwd_bwd_s=out["forward_backward_s_median"],
               m4_forward_s=out["forward_s_median"], ref_loss=round(ref_loss, 4),
               m4_loss=out["loss"], m4_compile_s=out["compile_s"],
               load_avg_1min=round(os.getloadavg()[0], 2))
    if device.type == "cuda":
      row["ref_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
      row["m4_device_peak_mb"] = out["device_peak_mb"]
    if r == 0:
      row["m4_fraction_of_wall"] = out["fraction_of_wall"]
      row["m4_wall_tflops"] = out["wall_tflops"]
    log(f"  m4 step {row['m4_step_s']} s (forward + backward {row['m4_fwd_bwd_s']} s)")
    print(json.dumps(row), flush=True)
    rounds.append(row)

  med = {k: statistics.median(x[k] for x in rounds)
         for k in ("ref_fwd_bwd_s", "ref_adamw_s", "m4_step_s", "m4_fwd_bwd_s")}
  tps = {k[:-2] + "_tokens_per_s": round(tokens / v, 1) for k, v in med.items()}
  print(json.dumps({
      **{k: round(v, 4) for k, v in med.items()}, **tps,
      "ratio_m4_step_vs_ref_fwd_bwd": round(med["ref_fwd_bwd_s"] / med["m4_step_s"], 3),
      "ratio_m4_step_vs_ref_adamw": round(med["ref_adamw_s"] / med["m4_step_s"], 3),
      "ratio_m4_fwd_bwd_vs_ref_fwd_bwd": round(med["ref_fwd_bwd_s"] / med["m4_fwd_bwd_s"], 3),
      "bar": ">= 1.2 (ratio_m4_step_vs_ref_fwd_bwd)",
      "m4_fraction_of_wall": rounds[0]["m4_fraction_of_wall"], "m4_mfu": out["mfu"],
      "ref_fwd_bwd_mfu": (round(out["gflops_per_step"] / 1e3 / med["ref_fwd_bwd_s"]
                                / out["peak_tflops"], 4) if out["peak_tflops"] else None),
      "peak_tflops": out["peak_tflops"], "gflops_per_step": out["gflops_per_step"],
      "tokens_per_step": tokens,
      "batch_inputs_targets_per_modality": per_mod, "m4_mean_target_vocab": out["mean_target_vocab"],
      "batch_size": config.batch_size, "rounds": a.rounds, "steps": a.steps,
      "warmup": a.warmup, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
      "config": a.config, "torch_device": str(device), "m4_backend": jax.default_backend(),
      "jax": jax.__version__, "m4_devices": len(jax.devices()), "cpus": os.cpu_count(),
      "load_avg": [round(x, 2) for x in os.getloadavg()], "tiny": a.tiny}), flush=True)


if __name__ == "__main__":
  main()
