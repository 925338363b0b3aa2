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

The DiVAE fixtures (`ml4m_tok_divae_*`) are the reference `DiVAE` the same way,
with per run the UNet's output at one (x_t, t) and `decode_tokens` with its
DDIMScheduler from a stored initial noise (their READMEs say what each key
holds); `ml4m_tok_ddim` holds the reference DDIMScheduler's schedules,
timesteps and steps on their own.

No ml-4m code lives here: `fourm` is imported from --ml4m, with the modules the
tokenizers do not use (the UViT / ControlNet decoders, torchvision, cv2,
albumentations) replaced by empty stubs, and `diffusers` by stubs of the few
names the UNet, schedulers and pipeline use. Test-size ViTs are registered
into the reference's `vit_models` under m4's custom preset names
`vit_d<width>_l<depth>_h<heads>_{enc,dec}`, test-size UNets into its `unet`
as `unet_p<patch>_c<width>_r<blocks>_m<mults>_a<factors>`.
"""

import argparse
import functools
import inspect
import json
import os
import sys
import textwrap
import types

import numpy as np
import torch

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


MIN_MARGIN = 1e-4  # Inputs are redrawn until every token wins by this much.
MAX_DRAWS = 50


def stub(name, path=None, **attrs):
  m = types.ModuleType(name)
  if path is not None:
    m.__path__ = [path]
  m.__dict__.update(attrs)
  sys.modules[name] = m
  return m


def register_to_config(init):
  """diffusers' decorator, as far as the schedulers use it: self.config = the arguments."""
  sig = inspect.signature(init)

  @functools.wraps(init)
  def wrapped(self, *args, **kwargs):
    bound = sig.bind(self, *args, **kwargs)
    bound.apply_defaults()
    self.config = types.SimpleNamespace(**{k: v for k, v in bound.arguments.items()
                                           if k != "self"})
    init(self, *args, **kwargs)
  return wrapped


def stub_diffusers():
  """The few `diffusers` names 4M's UNet, schedulers and pipeline use (its base
  classes' loading / saving machinery is not needed to run them)."""
  class ModelMixin(torch.nn.Module):
    device = property(lambda self: next(self.parameters()).device)

  class DiffusionPipeline:
    def register_modules(self, **modules):
      self.__dict__.update(modules)

  class ConfigMixin:
    pass

  class SchedulerMixin:
    pass

  randn = lambda shape, generator=None, device=None, dtype=None: torch.randn(
      shape, generator=generator, dtype=dtype)
  stub("diffusers", StableDiffusionPipeline=object, DiffusionPipeline=DiffusionPipeline)
  stub("diffusers.configuration_utils", ConfigMixin=ConfigMixin, register_to_config=register_to_config)
  stub("diffusers.models")
  stub("diffusers.models.modeling_utils", ModelMixin=ModelMixin)
  stub("diffusers.utils", BaseOutput=object, randn_tensor=randn)
  stub("diffusers.schedulers")
  stub("diffusers.schedulers.scheduling_utils", SchedulerMixin=SchedulerMixin,
       KarrasDiffusionSchedulers=[],
       SchedulerOutput=object)


def import_fourm(ml4m):
  """fourm.vq.vqvae and fourm.data.modality_transforms, heavy imports stubbed."""
  root = os.path.abspath(ml4m)
  sys.path.insert(0, root)
  here = lambda *p: os.path.join(root, "fourm", *p)
  stub_diffusers()
  for name in ("cv2", "albumentations", "torchvision", "torchvision.transforms",
               "torchvision.transforms.functional"):
    stub(name)
  tv = sys.modules
  tv["torchvision"].transforms = tv["torchvision.transforms"]
  tv["torchvision.transforms"].functional = tv["torchvision.transforms.functional"]
  stub("fourm.vq", here("vq"))
  stub("fourm.data", here("data"))
  stub("fourm.utils", here("utils"), denormalize=None, to_2tuple=lambda x: x if isinstance(
      x, tuple) else (x, x))
  stub("fourm.vq.models.unet", here("vq", "models", "unet"))
  for name in ("fourm.vq.models.uvit", "fourm.vq.models.controlnet"):
    stub(name)
  from fourm.vq import vqvae  # pylint: disable=g-import-not-at-top
  from fourm.vq.models import vit_models  # pylint: disable=g-import-not-at-top
  from fourm.data import modality_transforms  # pylint: disable=g-import-not-at-top
  return vqvae, vit_models, modality_transforms


def register_presets(vit_models, configs):
  """vit_d<w>_l<d>_h<h>_{enc,dec} -> the reference's ViTEncoder / ViTDecoder."""
  for cfg in configs:
    for key, cls in (("enc_type", vit_models.ViTEncoder), ("dec_type", vit_models.ViTDecoder)):
      name = cfg[key]
      if not name.startswith("vit_d"):
        continue
      w, d, h = (int(p[1:]) for p in name.split("_")[1:4])
      def preset(*args, _cls=cls, _w=w, _d=d, _h=h, **kw):
        assert not args
        kw.pop("ckpt_path", None)
        return _cls(dim_tokens=_w, depth=_d, num_heads=_h, mlp_ratio=4, qkv_bias=True, **kw)
      setattr(vit_models, name, preset)


def perturb(model, gen):
  """Moves every floating parameter / buffer off its initial value."""
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if not t.is_floating_point() or name.endswith(("initted", "cluster_size")):
        continue
      if name.endswith("gamma"):  # ConvNeXt layer scale, 1e-6 at init.
        t.copy_(0.5 * torch.randn(t.shape, generator=gen))
      elif t.ndim == 1:  # Biases (0) and norms (1).
        t.add_(0.1 * torch.randn(t.shape, generator=gen))
      else:
        t.add_(0.02 * torch.randn(t.shape, generator=gen))


def make_input(kind, cfg, batch, size, gen):
  if kind == "ids":
    return torch.randint(0, cfg["n_labels"], (batch, size, size), generator=gen)
  if kind == "masks":
    return (torch.rand((batch, 1, size, size), generator=gen) > 0.5).float()
  return torch.randn((batch, cfg["n_channels"], size, size), generator=gen)


@torch.no_grad()
def margins(model, latents):
  """Per token: the best minus the second-best quantizer score."""
  q = model.quantize
  z = latents.permute(0, 2, 3, 1)
  if hasattr(q, "codes"):  # memcodes: per head.
    h = q.heads
    zq = z.reshape(*z.shape[:-1], h, -1) * q.scale
    scores = torch.einsum("bxyhd,hkd->bxyhk", zq, q.to_k(q.codes))
  else:
    norm = torch.nn.functional.normalize
    scores = norm(z, dim=-1) @ norm(q.codebook, dim=-1).T
  top = scores.topk(2, dim=-1).values
  return (top[..., 0] - top[..., 1]).numpy()


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
  folder = os.path.join(out, name)
  os.makedirs(folder, exist_ok=False)
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  save_file(state, os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
  np.savez(os.path.join(folder, "reference.npz"), **arrays)
  n_params = sum(v.numel() for v in state.values())
  return folder, lines, n_params


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


# DiVAE (diffusion decoder) fixtures. The UNet's GroupNorm(32) makes 32 the
# smallest width; `unet_p2_c32_r0_m1-1_a2` (patch 2, two levels, no ResBlock
# in the encoder path, attention at factor 2) still has every kind of layer
# (ResBlock with and without a skip conv, attention, down- and upsampling)
# at ~165k numbers, so its weights are stored as float16 (the reference ran on
# exactly those values) to keep the fixture near 400 KB.
DIVAE_FIXTURES = {
    # RGB 16k's recipe (and depth / normals / edges': the same but channels):
    # ViT encoder + tanh post-MLP, lucid, patched UNet predicting x0, linear
    # betas with zero terminal SNR, x0 clipped (thresholding).
    "ml4m_tok_divae_rgb": dict(
        config=dict(enc_type="vit_d24_l1_h2_enc", dec_type="unet_p2_c32_r0_m1-1_a2", n_channels=3,
                    image_size=16, patch_size=4, patch_proj=True, post_mlp=True,
                    quant_type="lucid", codebook_size=64, latent_dim=8, norm_codes=True,
                    num_codebooks=1, undo_std=False, sync_codebook=False,
                    num_train_timesteps=1000, scheduler="ddim", beta_schedule="linear",
                    prediction_type="sample", clip_sample=False, thresholding=True,
                    zero_terminal_snr=True, cls_free_guidance_dropout=0.0, masked_cfg=False),
        runs={"a": (2, 16, 500, 3)}),
    # Depth 8k's shape (1 channel; positions for 32 px run at 16 px), with the
    # other DDIM branches: v-prediction, the shifted cosine schedule, no clipping.
    "ml4m_tok_divae_depth": dict(
        config=dict(enc_type="vit_d24_l1_h2_enc", dec_type="unet_p2_c32_r0_m1-1_a2", n_channels=1,
                    image_size=32, patch_size=4, patch_proj=True, post_mlp=True,
                    quant_type="lucid", codebook_size=64, latent_dim=8, norm_codes=True,
                    num_codebooks=1, undo_std=False, sync_codebook=False,
                    num_train_timesteps=1000, scheduler="ddim",
                    beta_schedule="shifted_cosine:0.5", prediction_type="v_prediction",
                    clip_sample=False, thresholding=False, zero_terminal_snr=True),
        runs={"a": (2, 16, 250, 4)}),
}


def register_unet_presets(unet, configs):
  """unet_p<p>_c<w>_r<n>_m<mults>_a<factors> -> the reference's PatchedUNetCondCat."""
  for cfg in configs:
    name = cfg["dec_type"]
    p, c, r, m, a = name.split("_")[1:]
    kw = dict(patch_size=int(p[1:]), model_channels=int(c[1:]), num_res_blocks=int(r[1:]),
              channel_mult=tuple(int(v) for v in m[1:].split("-")),
              attention_resolutions=[int(v) for v in a[1:].split("-") if v])
    setattr(unet, name, lambda _kw=kw, **k: unet.PatchedUNetCondCat(**_kw, **k))


def _f64(fn, *args):
  """fn(*args) with the reference's float32 casts (GroupNorm32, post-MLP,
  quantizer) made no-ops, for the float64 twin."""
  f32 = torch.Tensor.float
  torch.Tensor.float = lambda t, *a, **k: t.double()
  try:
    return fn(*args)
  finally:
    torch.Tensor.float = f32


@torch.no_grad()
def ddim_loop(model, codes, noise, steps):
  """The reference scheduler's own set_timesteps / step, driven by hand (for float64)."""
  sched = model.noise_scheduler
  sched.set_timesteps(steps, mode="trailing")
  x = noise
  for t in sched.timesteps:
    x = sched.step(model.decoder(x, t, codes), t, x).prev_sample
  return x


def make_divae_fixture(vqvae, name, spec, out, seed):
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  torch.manual_seed(seed)
  cfg = spec["config"]
  model = vqvae.DiVAE(**cfg).eval()
  perturb(model, gen)
  with torch.no_grad():  # Weights stored as float16: run on exactly those values.
    for t in model.state_dict().values():
      if t.is_floating_point():
        t.copy_(t.half().float())
  model64 = vqvae.DiVAE(**cfg).double().eval()
  model64.load_state_dict({k: v.double() if v.is_floating_point() else v
                           for k, v in model.state_dict().items()})
  arrays, lines = {}, []
  for r, (batch, size, t_step, steps) in spec["runs"].items():
    for _ in range(MAX_DRAWS):
      x = torch.rand((batch, cfg["n_channels"], size, size), generator=gen) * 2 - 1
      with torch.no_grad():
        h = model.quant_proj(model.encoder(model.prepare_input(x)))
      if margins(model, h).min() > MIN_MARGIN:
        break
    else:
      raise RuntimeError(f"{name}/{r}: no input with margins > {MIN_MARGIN} in {MAX_DRAWS} draws")
    x_t = torch.randn((batch, cfg["n_channels"], size, size), generator=gen)
    noise_seed = int(torch.randint(0, 2 ** 31, (1,), generator=gen))
    noise = torch.randn((batch, cfg["n_channels"], size, size),
                        generator=torch.Generator().manual_seed(noise_seed))
    with torch.no_grad():
      quant, _, tokens = model.encode(x)
      step_out = model.decoder(x_t, torch.tensor(t_step), quant)
      sample = model.decode_tokens(tokens, timesteps=steps, image_size=size, verbose=False,
                                   generator=torch.Generator().manual_seed(noise_seed))
    assert torch.equal(ddim_loop(model, quant, noise, steps), sample), "pipeline != its steps"
    with torch.no_grad():
      quant64 = _f64(lambda: model64.encode(x.double())[0])
      step64 = _f64(lambda: model64.decoder(x_t.double(), torch.tensor(t_step), quant64))
      sample64 = _f64(ddim_loop, model64, quant64, noise.double(), steps)
    sched = model.noise_scheduler
    arrays.update({f"{r}__input": x.numpy(), f"{r}__latents": h.numpy(),
                   f"{r}__tokens": tokens.numpy().astype(np.int32), f"{r}__codes": quant.numpy(),
                   f"{r}__margin": margins(model, h), f"{r}__step_x": x_t.numpy(),
                   f"{r}__step_t": np.int64(t_step), f"{r}__step_out": step_out.numpy(),
                   f"{r}__noise": noise.numpy(), f"{r}__steps": np.int64(steps),
                   f"{r}__sample": sample.numpy(),
                   f"{r}__timesteps": sched.timesteps.numpy().astype(np.int64),
                   f"{r}__alphas_cumprod": sched.alphas_cumprod.numpy().astype(np.float32)})
    err = lambda a, b: float((a.double() - b).abs().max())
    lines.append(f"| `{r}` | {tuple(x.shape)} | {tuple(tokens.shape)} | {t_step} |"
                 f" {steps} ({', '.join(str(int(v)) for v in sched.timesteps)}) |"
                 f" {arrays[f'{r}__margin'].min():.2e} | {err(quant, quant64):.1e} |"
                 f" {err(step_out, step64):.1e} | {err(sample, sample64):.1e} |")
  state = {k: (v.half() if v.is_floating_point() else v).detach().contiguous()
           for k, v in model.state_dict().items()}
  folder = os.path.join(out, name)
  os.makedirs(folder, exist_ok=False)
  save_file(state, os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
  np.savez_compressed(os.path.join(folder, "reference.npz"), **arrays)
  return folder, lines, sum(v.numel() for v in state.values())


DIVAE_README = """# {name}: a reference run of 4M's DiVAE tokenizer

{what}

Made by `python experiments/parity_4m/make_tokenizer_fixtures.py --ml4m=/tmp/ml4m
--out=tests/fixtures --only={name}` (apple/ml-4m at {commit}, torch {torch}, seed
{seed}; `diffusers` replaced by stubs of the few names 4M's UNet, schedulers and
pipeline use): the reference `fourm.vq.vqvae.DiVAE(**config.json)` at random
weights ({n_params} numbers), every floating tensor perturbed after
initialisation and then rounded to float16, eval mode, CPU.

| file | holds |
| --- | --- |
| `config.json` | the reference's constructor arguments, as a released tokenizer's |
| `model.safetensors` | its whole state dict, stored as float16 (the values the reference ran on, in float32) |
| `reference.npz` | per run `r`: `r__input` (B C H W in [-1, 1]), `r__latents`, `r__tokens`, `r__codes` (B D h w), `r__margin`; `r__step_out` = the UNet (`model.decoder`) at `r__step_x`, timestep `r__step_t`, conditioned on the codes; `r__sample` = `decode_tokens(tokens, timesteps=r__steps, generator=...)` with the model's DDIMScheduler from the initial noise `r__noise` (the generator's first draw); `r__timesteps` and `r__alphas_cumprod` of that scheduler |

| run | input | tokens | UNet step at t | DDIM steps (timesteps) | min margin | float32 noise: codes | step | sample |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

"Float32 noise" is the largest difference between this float32 run and the
same weights in float64 (the sample from the scheduler's own `step`, driven by
hand with the same noise; the float32 sample equals the pipeline's exactly):
the size of rounding m4 cannot be expected to beat.
`python -m m4.tools.convert_4m_tokenizer --src=tests/fixtures/{name} --check=tests/fixtures/{name}`
compares m4 with this run.
"""

DIVAE_WHAT = {
    "ml4m_tok_divae_rgb": "RGB 16k's recipe at test size: a 16 px image -> ViT encoder (width"
                          " 24, 1 block, patch 4, tanh post-MLP) -> lucid cosine codebook (64 x"
                          " 8), 4x4 tokens -> a patched UNet (patch 2, width 32, two levels, one"
                          " attention block besides the middle one) conditioned on the"
                          " nearest-upsampled codes, predicting x0; DDIM with linear betas, zero"
                          " terminal SNR, trailing timesteps, x0 clipped (thresholding).",
    "ml4m_tok_divae_depth": "Depth 8k's shape at test size (1 channel; encoder positions for 32"
                            " px, run at 16 px: bicubic-resized), and the DDIM branches the RGB"
                            " fixture does not take: v-prediction, the shifted cosine schedule"
                            " (shift 0.5), no clipping.",
}


def make_ddim_fixture(ddim_cls, out, seed):
  """The reference DDIMScheduler's schedules, timesteps and one step per prediction type."""
  rng = np.random.default_rng(seed)
  arrays = {}
  schedules = [("linear", True), ("linear", False), ("scaled_linear", True),
               ("squaredcos_cap_v2", False), ("squaredcos_cap_v2", True),
               ("shifted_cosine:0.5", True), ("shifted_cosine:2", True)]
  for i, (beta, zts) in enumerate(schedules):
    s = ddim_cls(num_train_timesteps=1000, beta_schedule=beta, zero_terminal_snr=zts)
    arrays[f"schedule{i}"] = s.alphas_cumprod.numpy().astype(np.float32)
  for mode in ("trailing", "leading", "linspace"):
    for steps in (1, 3, 7, 25, 50, 1000):
      s = ddim_cls(num_train_timesteps=1000)
      s.set_timesteps(steps, mode=mode)
      arrays[f"timesteps_{mode}_{steps}"] = s.timesteps.numpy().astype(np.int64)
  x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32) * 1.5
  out_ = rng.normal(size=(2, 3, 4, 4)).astype(np.float32) * 1.5
  arrays.update(step_x=x, step_model_output=out_)
  for pred in ("sample", "epsilon", "v_prediction"):
    for clip in (False, True):
      s = ddim_cls(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                   prediction_type=pred, thresholding=clip, clip_sample=False,
                   zero_terminal_snr=False)
      s.set_timesteps(7, mode="trailing")
      for t in (int(s.timesteps[0]), int(s.timesteps[-1])):
        arrays[f"step_{pred}_{int(clip)}_{t}"] = s.step(
            torch.from_numpy(out_), t, torch.from_numpy(x)).prev_sample.numpy()
  folder = os.path.join(out, "ml4m_tok_ddim")
  os.makedirs(folder, exist_ok=False)
  np.savez_compressed(os.path.join(folder, "ddim.npz"), **arrays)
  names = textwrap.fill("- alphas_cumprod of each beta schedule: " + ", ".join(
      f"`schedule{i}` = {b} (zero terminal SNR {z})" for i, (b, z) in enumerate(schedules))
      + ";", 79, subsequent_indent="  ")
  with open(os.path.join(folder, "README.md"), "w") as f:
    f.write(f"""# ml4m_tok_ddim: 4M's DDIM scheduler on its own

Made by `experiments/parity_4m/make_tokenizer_fixtures.py --only=ml4m_tok_ddim`
(seed {seed}) with apple/ml-4m's own `fourm.vq.scheduling.DDIMScheduler`
(1000 training steps):

{names}
- `timesteps_<mode>_<n>`: `set_timesteps(n, mode)` for trailing, leading and
  linspace spacing, n in 1, 3, 7, 25, 50, 1000;
- `step_<prediction>_<clip>_<t>`: `step(step_model_output, t, step_x).prev_sample`
  (eta 0) with squaredcos_cap_v2 betas, no zero terminal SNR, 7 trailing steps,
  at the first and last timestep, for x0 / epsilon / v prediction, with and
  without thresholding (x0 clipped to [-1, 1]).
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
  for i, (name, spec) in enumerate(FIXTURES.items()):
    if args.only and name not in args.only.split(","):
      continue
    folder, rows, n = make_fixture(vqvae, name, spec, args.out, args.seed + i)
    with open(os.path.join(folder, "README.md"), "w") as f:
      f.write(README.format(name=name, what=textwrap.fill(WHAT[name], 79), commit=commit or "?",
                            torch=torch.__version__, seed=args.seed + i, n_params=n,
                            rows="\n".join(rows)))
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(json.dumps({"fixture": folder, "bytes": size, "params": n}))
  for j, (name, spec) in enumerate(DIVAE_FIXTURES.items()):
    if args.only and name not in args.only.split(","):
      continue
    seed = args.seed + len(FIXTURES) + j
    folder, rows, n = make_divae_fixture(vqvae, name, spec, args.out, seed)
    with open(os.path.join(folder, "README.md"), "w") as f:
      f.write(DIVAE_README.format(name=name, what=textwrap.fill(DIVAE_WHAT[name], 79),
                                  commit=commit or "?", torch=torch.__version__, seed=seed,
                                  n_params=n, rows="\n".join(rows)))
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(json.dumps({"fixture": folder, "bytes": size, "params": n}))
  if not args.only or "ml4m_tok_io" in args.only.split(","):
    print(json.dumps({"fixture": make_io_fixture(transforms, args.out, args.seed)}))
  if not args.only or "ml4m_tok_ddim" in args.only.split(","):
    print(json.dumps({"fixture": make_ddim_fixture(DDIMScheduler, args.out, args.seed)}))


if __name__ == "__main__":
  main()
