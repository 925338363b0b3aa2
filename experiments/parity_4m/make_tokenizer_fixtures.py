"""Writes reference runs of 4M's VQ-VAE and DiVAE tokenizers (apple/ml-4m) as test fixtures.

    pip install torch einops huggingface_hub safetensors
    git clone https://github.com/apple/ml-4m /tmp/ml4m
    python experiments/parity_4m/make_tokenizer_fixtures.py --ml4m=/tmp/ml4m --out=tests/fixtures

Each fixture is the reference `fourm.vq.vqvae.VQVAE` at random weights (fixed
seed, tiny sizes), in the released layout (`model.safetensors` = its whole
state dict, `config.json` = its constructor arguments, as on the Hugging Face
hub), plus `reference.npz`: per run `<r>__input` (the reference's layout: NCHW,
or (B, H, W) class ids), `<r>__latents` (quant_proj output), `<r>__tokens`,
`<r>__codes` (the quantizer's output), `<r>__reconstruction`
(`decode_tokens(tokens)`), `<r>__margin` (per token: best minus second-best
quantizer score); each README gives the largest difference between that run
in float32 and in float64 (the size of float32 noise). Every weight, bias and
norm is perturbed after the reference's initialisation (zero biases, unit
norms and ConvNeXt's 1e-6 layer scale would hide a mix-up). `ml4m_tok_io`
holds the reference's depth standardisation and semseg id shift on random
inputs. Existing fixture folders are refused, not overwritten.

The DiVAE fixtures (`ml4m_tok_divae_*`, `divae_fixtures.py`) are the reference `DiVAE` the same way,
with per run the UNet's output at one (x_t, t) and `decode_tokens` with its
DDIMScheduler from a stored initial noise (their READMEs say what each key
holds); `ml4m_tok_ddim` holds the reference DDIMScheduler's schedules,
timesteps and steps on their own.

No ml-4m code lives here: `fourm` is imported from --ml4m (`reference_4m.py`), with the modules the
tokenizers do not use (the UViT / ControlNet decoders, torchvision, cv2,
albumentations) replaced by empty stubs, and `diffusers` by stubs of the few
names the UNet, schedulers and pipeline use. Test-size ViTs are registered
into the reference's `vit_models` under m4's custom preset names
`vit_d<width>_l<depth>_h<heads>_{enc,dec}`, test-size UNets into its `unet`
as `unet_p<patch>_c<width>_r<blocks>_m<mults>_a<factors>`.
"""

import argparse
import json
import os
import textwrap

import numpy as np
import torch

from divae_fixtures import DIVAE_FIXTURES, DIVAE_README, DIVAE_WHAT
from divae_fixtures import make_ddim_fixture, make_divae_fixture
from reference_4m import MAX_DRAWS, MIN_MARGIN, import_fourm, margins, perturb
from reference_4m import register_presets, register_unet_presets, save_fixture

FIXTURES = {
    # COCO semseg 4k's recipe (ViT enc/dec, tanh post-MLP, lucid cosine codes),
    # trained at "448" (32 px, 8x8 positions), run at half size and natively.
    "ml4m_tok_semseg": dict(
        config=dict(enc_type="vit_d24_l2_h2_enc", dec_type="vit_d24_l1_h2_dec", n_channels=8,
                    n_labels=10, image_size=32, patch_size=4, patch_proj=True, post_mlp=True,
                    quant_type="lucid", codebook_size=64, latent_dim=8, norm_codes=True,
                    num_codebooks=1, out_conv=False, undo_std=False, sync_codebook=False),
        runs={"a": (2, 16), "b": (1, 32)}, input="ids"),
    # CLIP-B/16 8k's recipe: feature maps in (no patching), positions for an
    # 8x8 grid ("448"), run at 4x4 ("224"), 6x6 (a non-integer resize) and 8x8.
    "ml4m_tok_clip": dict(
        config=dict(enc_type="vit_d24_l2_h2_enc", dec_type="vit_d24_l1_h2_dec", n_channels=24,
                    image_size=128, patch_size=16, patch_proj=False, post_mlp=True,
                    quant_type="lucid", codebook_size=64, latent_dim=8, norm_codes=True,
                    num_codebooks=1, out_conv=False, undo_std=False, sync_codebook=False),
        runs={"a": (2, 4), "b": (2, 6), "c": (1, 8)}, input="features"),
    # DINOv2-B/14-global 8k's recipe: BottleneckMLP enc/dec on a 1x1 feature,
    # memcodes with 4 codebooks (heads).
    "ml4m_tok_global": dict(
        config=dict(enc_type="BottleneckMLP/B_2-Wi_32", dec_type="BottleneckMLP/B_2-Wi_32",
                    n_channels=24, image_size=224, patch_size=14, quant_type="memcodes",
                    codebook_size=64, num_codebooks=4, latent_dim=32, sync_codebook=False),
        runs={"a": (6, 1)}, input="features"),
    # SAM instances 1k's recipe: 1-channel masks, ViT enc/dec with the two
    # ConvNeXt blocks after the decoder (out_conv), 4x4 tokens per mask.
    "ml4m_tok_sam": dict(
        config=dict(enc_type="vit_d24_l1_h2_enc", dec_type="vit_d24_l1_h2_dec", n_channels=1,
                    image_size=32, patch_size=8, patch_proj=True, out_conv=True,
                    quant_type="lucid", codebook_size=64, latent_dim=16, norm_codes=True,
                    num_codebooks=1, undo_std=False, sync_codebook=False),
        runs={"a": (3, 32)}, input="masks"),
}


def make_input(kind, cfg, batch, size, gen):
  if kind == "ids":
    return torch.randint(0, cfg["n_labels"], (batch, size, size), generator=gen)
  if kind == "masks":
    return (torch.rand((batch, 1, size, size), generator=gen) > 0.5).float()
  return torch.randn((batch, cfg["n_channels"], size, size), generator=gen)


def run(model, x):
  """(latents, codes, tokens, reconstruction). In float64, the reference's casts
  to float32 (its post-MLP and quantizer force float32) are made no-ops."""
  f32 = torch.Tensor.float
  if x.dtype == torch.float64 or model.quant_proj.weight.dtype == torch.float64:
    torch.Tensor.float = lambda t, *a, **k: t.double()
  try:
    return _run(model, x)
  finally:
    torch.Tensor.float = f32


def _run(model, x):
  with torch.no_grad():
    h = model.quant_proj(model.encoder(model.prepare_input(x)))
    quant, _, tokens = model.encode(x)
    rec = model.decode_tokens(tokens)
    assert torch.equal(rec, model.decode_quant(quant)), "decode_tokens != decode_quant"
  return h, quant, tokens, rec


def make_fixture(vqvae, name, spec, out, seed):
  gen = torch.Generator().manual_seed(seed)
  torch.manual_seed(seed)
  cfg = spec["config"]
  model = vqvae.VQVAE(**cfg).eval()
  perturb(model, gen)
  arrays, lines = {}, []
  model64 = vqvae.VQVAE(**cfg).double().eval()
  model64.load_state_dict({k: v.double() if v.is_floating_point() else v
                           for k, v in model.state_dict().items()})
  for r, (batch, size) in spec["runs"].items():
    for _ in range(MAX_DRAWS):  # Until no token id is decided by rounding.
      x = make_input(spec["input"], cfg, batch, size, gen)
      h, quant, tokens, rec = run(model, x)
      if margins(model, h).min() > MIN_MARGIN:
        break
    else:
      raise RuntimeError(f"{name}/{r}: no input with margins > {MIN_MARGIN} in {MAX_DRAWS} draws")
    x64 = x.double() if x.is_floating_point() else x
    h64, _, tokens64, rec64 = run(model64, x64)
    arrays.update({f"{r}__input": x.numpy(), f"{r}__latents": h.numpy(),
                   f"{r}__tokens": tokens.numpy().astype(np.int32),
                   f"{r}__codes": quant.numpy(), f"{r}__reconstruction": rec.numpy(),
                   f"{r}__margin": margins(model, h)})
    same = bool(torch.equal(tokens, tokens64))
    noise = (float((h.double() - h64).abs().max()), float((rec.double() - rec64).abs().max()))
    lines.append(f"| `{r}` | {tuple(x.shape)} | {tuple(tokens.shape)} | {tuple(rec.shape)} |"
                 f" {arrays[f'{r}__margin'].min():.2e} | {noise[0]:.1e} | {noise[1]:.1e} |"
                 f" {'yes' if same else 'NO'} |")
  state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
  folder = save_fixture(out, name, state, cfg, arrays)
  return folder, lines, sum(v.numel() for v in state.values())


README = """# {name}: a reference run of 4M's VQ-VAE tokenizer

{what}

Made by `python experiments/parity_4m/make_tokenizer_fixtures.py --ml4m=/tmp/ml4m
--out=tests/fixtures` (apple/ml-4m at {commit}, torch {torch}, seed {seed}): the
reference `fourm.vq.vqvae.VQVAE(**config.json)` at random weights ({n_params}
numbers), every floating tensor perturbed after initialisation, eval mode, CPU.

| file | holds |
| --- | --- |
| `config.json` | the reference's constructor arguments, as a released tokenizer's |
| `model.safetensors` | its whole state dict (float32), as released |
| `reference.npz` | per run `r`: `r__input`, `r__latents` (quant_proj output, B D h w), `r__tokens`, `r__codes` (quantizer output, B D h w), `r__reconstruction` (`decode_tokens`, B C H W), `r__margin` (per token: best minus second-best quantizer score) |

| run | input | tokens | reconstruction | min margin | float32 noise: latents | reconstruction | float64 tokens equal |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

"Float32 noise" is the largest difference between the reference's float32 and
float64 runs: the size of rounding m4 cannot be expected to beat. Inputs were
redrawn until every token's margin exceeded 1e-4, far above that noise, so no
token id is decided by rounding.
`python -m m4.tools.convert_4m_tokenizer --src=tests/fixtures/{name} --check=tests/fixtures/{name}`
compares m4 with this run.
"""

WHAT = {
    "ml4m_tok_semseg": "COCO semseg 4k's recipe at test size: class ids (10 labels) -> embedding (8"
                       " channels) -> ViT encoder (width 24, 2 blocks, 2 heads, patch 4, tanh"
                       " post-MLP) -> lucid cosine codebook (64 x 8) -> ViT decoder (1 block) ->"
                       " 10 logits per pixel. Positions are for 32 px (8x8, the release's 448);"
                       " run `a` is at 16 px (bicubic-resized positions, the release's 224), `b`"
                       " at 32 px.",
    "ml4m_tok_clip": "CLIP-B/16 8k's recipe at test size: a feature map (24 channels, no"
                     " patching: a 1x1 projection) -> ViT encoder (width 24, 2 blocks, 2 heads,"
                     " post-MLP) -> lucid cosine codebook (64 x 8) -> ViT decoder (1 block) -> 24"
                     " channels. Positions are for an 8x8 grid (the release's 448 / 16); runs at"
                     " 4x4 (the release's 224), 6x6 (a non-integer resize) and 8x8.",
    "ml4m_tok_global": "DINOv2-B/14 global 8k's recipe at test size: a 1x1 feature (24 channels)"
                       " -> BottleneckMLP (2 blocks, width 24) -> memcodes (4 codebooks of 64"
                       " entries, 8 dims each) -> BottleneckMLP -> 24 channels. Tokens are"
                       " (B, 4, 1, 1).",
    "ml4m_tok_sam": "SAM instances 1k's recipe at test size: a 1-channel 32 px mask -> ViT"
                    " encoder (width 24, 1 block, patch 8) -> lucid cosine codebook (64 x 16) ->"
                    " ViT decoder (1 block) -> two ConvNeXt blocks (`out_conv`) -> 1 logit per"
                    " pixel; 4x4 tokens.",
}


def make_io_fixture(transforms, out, seed):
  """The reference's depth standardisation and semseg id shift on random inputs."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  depth = np.exp(rng.normal(1.0, 0.6, (3, 24, 32))).astype(np.float32)
  std = np.stack([transforms.DepthTransform.truncated_depth_standardization(
      torch.from_numpy(d)[None]).numpy()[0] for d in depth])
  ids = rng.integers(0, 133, (2, 16, 16)).astype(np.uint8)
  ids[:, :3] = 255
  sem = transforms.SemsegTransform(shift_idx_by_one=True)
  shifted = np.stack([np.asarray(sem.preprocess(Image.fromarray(i, mode="L"))) for i in ids])
  folder = os.path.join(out, "ml4m_tok_io")
  os.makedirs(folder, exist_ok=False)
  np.savez(os.path.join(folder, "io.npz"), depth=depth, depth_standardized=std, semseg=ids,
           semseg_shifted=shifted)
  with open(os.path.join(folder, "README.md"), "w") as f:
    f.write(f"""# ml4m_tok_io: 4M's tokenizer input transforms on random inputs

Made by `experiments/parity_4m/make_tokenizer_fixtures.py` (seed {seed}) with
apple/ml-4m's own `fourm.data.modality_transforms`:

- `depth` (3, 24, 32) log-normal values -> `depth_standardized`:
  `DepthTransform.truncated_depth_standardization` per image (mean and
  unbiased variance of the values between the 10th and 90th percentile of the
  sorted pixels; (d - mean) / sqrt(var + 1e-6)).
- `semseg` (2, 16, 16) uint8 COCO class ids in [0, 133) with rows 0-2 set to
  255 (unlabelled) -> `semseg_shifted`: `SemsegTransform(shift_idx_by_one=True).preprocess`,
  the ids 4M's COCO semseg tokenizer reads (k -> k + 1, 255 -> 0).
""")
  return folder


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--ml4m", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--only", default="", help="Comma-separated fixture names.")
  ap.add_argument("--commit", default="", help="The ml-4m commit, for the READMEs (default:"
                  " git rev-parse in --ml4m).")
  args = ap.parse_args()
  torch.set_num_threads(1)
  vqvae, vit_models, transforms = import_fourm(args.ml4m)
  register_presets(vit_models, [s["config"] for s in (*FIXTURES.values(),
                                                      *DIVAE_FIXTURES.values())])
  from fourm.vq.models.unet import unet  # pylint: disable=g-import-not-at-top
  from fourm.vq.scheduling import DDIMScheduler  # pylint: disable=g-import-not-at-top
  register_unet_presets(unet, [s["config"] for s in DIVAE_FIXTURES.values()])
  commit = args.commit or os.popen(
      f"git -C {args.ml4m} rev-parse --short HEAD 2>/dev/null").read().strip()
  families = ((FIXTURES, make_fixture, README, WHAT),
              (DIVAE_FIXTURES, make_divae_fixture, DIVAE_README, DIVAE_WHAT))
  runs = [(name, spec, make, readme, what) for fixtures, make, readme, what in families
          for name, spec in fixtures.items()]
  for i, (name, spec, make, readme, what) in enumerate(runs):
    if args.only and name not in args.only.split(","):
      continue
    folder, rows, n = make(vqvae, name, spec, args.out, args.seed + i)
    with open(os.path.join(folder, "README.md"), "w") as f:
      f.write(readme.format(name=name, what=textwrap.fill(what[name], 79), commit=commit or "?",
                            torch=torch.__version__, seed=args.seed + i, n_params=n,
                            rows="\n".join(rows)))
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(json.dumps({"fixture": folder, "bytes": size, "params": n}))
  if not args.only or "ml4m_tok_io" in args.only.split(","):
    print(json.dumps({"fixture": make_io_fixture(transforms, args.out, args.seed)}))
  if not args.only or "ml4m_tok_ddim" in args.only.split(","):
    print(json.dumps({"fixture": make_ddim_fixture(DDIMScheduler, args.out, args.seed)}))


if __name__ == "__main__":
  main()
