"""Reference runs of 4M's DiVAE tokenizers and DDIM scheduler, as test fixtures.

Used by make_tokenizer_fixtures.py (`--only=ml4m_tok_divae_rgb,...`), which
imports the reference through reference_4m.py.
"""

import os
import textwrap

import numpy as np
import torch

from reference_4m import MAX_DRAWS, MIN_MARGIN, margins, perturb, save_fixture

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
  folder = save_fixture(out, name, state, cfg, arrays, compressed=True)
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
