"""Reads a released 4M VQ-VAE or DiVAE tokenizer (model.safetensors + config.json) into m4.

    model, info = released_convert.convert("4M_tokenizers_semseg_4k_224-448")
    report = released_convert.check(model, "tests/fixtures/ml4m_tok_semseg")

The source is a folder holding `model.safetensors` (the reference VQVAE's whole
state dict) and `config.json` (its constructor arguments; without it, the
safetensors metadata), as on the Hugging Face hub, or the .safetensors file.
Sizes come from the config's preset names (released_vqvae, released_unet);
every tensor is checked against them, as the reference's strict
`load_state_dict` would. A config with diffusion arguments (beta_schedule,
prediction_type, ...) or a `unet*` / `uvit*` decoder is a DiVAE
(released_divae); UViT decoders are refused.

Errors are ConversionErrors naming the file and the tensor or key: a missing,
misshapen or unused tensor, NaN or inf values, a config key m4 does not know
(`allow_unknown_keys` lists and ignores them instead), or a setting m4 does
not compute (`norm_codes=False`, `undo_std`, a UViT decoder, a DiVAE with
class labels).
Config keys that only matter for training (EMA decay, dead-code threshold,
commitment weight, ...) are accepted and ignored; so is `norm_latents`, which
does not change a cosine codebook's choice; so are a DiVAE's classifier-free
guidance dropout and conditioning-mask arguments.

`check` compares a converted model with a reference run saved by
experiments/parity_4m/make_tokenizer_fixtures.py (reference.npz); for a
DiVAE, `check_divae`: one UNet step and a short DDIM sampling as well.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx

from m4.models.convert.source import ConversionError, read_source
from m4.tokenizers import released_ddim
from m4.tokenizers.released_divae import DiVAEConfig, ReleasedDiVAE
from m4.tokenizers.released_unet import layout
from m4.tokenizers.released_vqvae import Config, ReleasedVQVAE

# Constructor arguments of the reference VQ / VQVAE that do not change what the
# model computes at eval time.
TRAINING_KEYS = frozenset({
    "sync_codebook", "ema_decay", "threshold_ema_dead_code", "code_replacement_policy",
    "commitment_weight", "kmeans_init", "ckpt_path", "ignore_keys", "freeze_enc",
    "norm_latents"})
SUPPORTED_VALUES = {"norm_codes": True, "undo_std": False}  # The only values m4 computes.
DIFFUSION_KEYS = frozenset({
    "num_train_timesteps", "cls_free_guidance_dropout", "masked_cfg", "masked_cfg_low",
    "masked_cfg_high", "scheduler", "beta_schedule", "prediction_type", "clip_sample",
    "thresholding", "conditioning", "dec_transformer_dropout", "zero_terminal_snr"})
# DiVAE arguments that only matter for training (classifier-free guidance
# dropout, conditioning masks) or for its UViT decoders, which m4 refuses.
DIFFUSION_TRAINING_KEYS = frozenset({
    "cls_free_guidance_dropout", "masked_cfg", "masked_cfg_low", "masked_cfg_high",
    "conditioning", "dec_transformer_dropout"})
IGNORED_BUFFERS = ("quantize._codebook.initted", "quantize._codebook.cluster_size")
_INT_FIELDS = ("n_channels", "n_labels", "image_size", "image_size_enc", "image_size_dec",
               "patch_size", "patch_size_dec", "codebook_size", "num_codebooks", "latent_dim",
               "num_train_timesteps")
_BOOL_FIELDS = ("patch_proj", "post_mlp", "out_conv", "clip_sample", "thresholding",
                "zero_terminal_snr")

# Tolerances of `check` (absolute). Token ids must be equal. Codes are rows of
# the same float32 codebook (lucid: equal; memcodes: codes @ W_v, one matmul).
# Latents and reconstructions run through float32 transformers whose sums m4
# orders differently; the reference's own float32 runs are ~1e-6 from float64
# on the fixtures (their READMEs), so these leave ~10x headroom.
LATENT_TOL = 1e-5
CODE_TOL = 1e-5
RECON_TOL = 1e-4
# DiVAE (check_divae), absolute: the UNet's output at one timestep and a short
# DDIM sample (a few UNet calls) are float32 conv nets whose sums m4 orders
# differently; the reference's own float32 runs are ~1e-6 from float64 on the
# fixtures, so 1e-4 leaves ~100x headroom and still catches a wrong weight or
# coefficient (~1e-2 off). The schedule (alphas_cumprod, in [0, 1]): the
# reference's float32 cumprod of 1000 factors drifts up to ~8e-7 from m4's
# float64 one (ml4m_tok_ddim).
STEP_TOL = 1e-4
SAMPLE_TOL = 1e-4
SCHEDULE_TOL = 2e-6


@dataclasses.dataclass
class Info:
  """What a conversion read and skipped."""

  safetensors: str
  config_path: str
  reference_config: dict
  ignored_keys: list[str]


def source_paths(src: str) -> tuple[str, str]:
  """(safetensors path, config.json path) of a folder or a .safetensors file."""
  path = os.path.join(src, "model.safetensors") if os.path.isdir(src) else src
  return path, os.path.join(os.path.dirname(path), "config.json")


def plan(tensors: dict[str, np.ndarray], ref_cfg: dict[str, Any], where: str,
         allow_unknown_keys: bool = False) -> tuple[Config | DiVAEConfig, list[str]]:
  """(the model's config, ignored unknown keys) from a reference config: a
  DiVAEConfig when it has diffusion arguments or a UNet / UViT decoder."""
  if not ref_cfg:
    raise ConversionError(f"{where}: no config (no config.json, no config in the safetensors"
                          " metadata); the reference's constructor arguments are needed.")
  if DIFFUSION_KEYS & set(ref_cfg) or str(ref_cfg.get("dec_type", "")).startswith(("unet", "uvit")):
    ref_cfg = dict(ref_cfg)
    if ref_cfg.get("n_labels") is not None:
      raise ConversionError(f"{where}: a DiVAE with n_labels {ref_cfg['n_labels']!r}; no released"
                            " DiVAE reads class ids, m4 does not convert one.")
    ref_cfg.pop("n_labels", None)
    return _plan(DiVAEConfig, tensors, ref_cfg, where, allow_unknown_keys,
                 TRAINING_KEYS | DIFFUSION_TRAINING_KEYS)
  return _plan(Config, tensors, ref_cfg, where, allow_unknown_keys, TRAINING_KEYS)


def _plan(cls, tensors, ref_cfg, where, allow_unknown_keys, ignored_keys):
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(ref_cfg) - fields - ignored_keys - set(SUPPORTED_VALUES) - {"config"})
  kind = "DiVAE" if cls is DiVAEConfig else "VQVAE"
  if unknown and not allow_unknown_keys:
    raise ConversionError(f"{where}: unknown config keys {unknown} (not arguments of the"
                          f" reference {kind}); --allow_unknown_keys ignores them.")
  for key, value in SUPPORTED_VALUES.items():
    if key in ref_cfg and ref_cfg[key] != value:
      if key == "norm_codes" and ref_cfg.get("quant_type", "lucid") != "lucid":
        continue
      raise ConversionError(f"{where}: config key {key!r} is {ref_cfg[key]!r}; m4 computes only"
                            f" {value!r} (every released tokenizer's).")
  d = {k: ref_cfg[k] for k in fields if k in ref_cfg}
  if "cls_emb.weight" in tensors and "n_labels" in fields and "n_labels" not in d:  # As the reference's own loader.
    d["n_labels"] = tensors["cls_emb.weight"].shape[0]
  if "n_channels" not in d:
    for name, axis in (("cls_emb.weight", 1), ("encoder.linear_in.weight", 1),
                       ("encoder.proj.weight", 1)):
      if name in tensors:
        d["n_channels"] = tensors[name].shape[axis]
        break
  for k in _INT_FIELDS:
    v = d.get(k)
    if isinstance(v, str) and v.isdigit():
      d[k] = v = int(v)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
      raise ConversionError(f"{where}: config key {k!r} must be a positive integer, got {v!r}.")
  for k in _BOOL_FIELDS:
    if k in d and not isinstance(d[k], bool):
      raise ConversionError(f"{where}: config key {k!r} must be true or false, got {d[k]!r}.")
  try:
    return cls(**d).validate(), unknown
  except ValueError as e:
    raise ConversionError(f"{where}: {e}") from None


Rule = tuple[str, tuple, tuple, Callable[[np.ndarray], np.ndarray]]


def rules(cfg: Config | DiVAEConfig) -> list[Rule]:
  """(reference tensor, m4 parameter path, reference shape, reference -> m4) for cfg."""
  out: list[Rule] = []
  same = lambda a: a

  def add(ref, path, shape, fn=same):
    out.append((ref, tuple(path), tuple(shape), fn))

  def linear(ref, path, din, dout):
    add(f"{ref}.weight", (*path, "kernel"), (dout, din), lambda a: a.T)
    add(f"{ref}.bias", (*path, "bias"), (dout,))

  def conv1x1(ref, path, din, dout):
    add(f"{ref}.weight", (*path, "kernel"), (dout, din, 1, 1), lambda a: a[:, :, 0, 0].T)
    add(f"{ref}.bias", (*path, "bias"), (dout,))

  def norm(ref, path, d):
    add(f"{ref}.weight", (*path, "scale"), (d,))
    add(f"{ref}.bias", (*path, "bias"), (d,))

  def vit(part, arch, cin=0, cout=0):
    w, p, g = arch["width"], arch["patch"], arch["grid"]
    if cin:  # (D, C, p, q) conv -> (p q c, D) on "b h w (p q c)" patches.
      add(f"{part}.proj.weight", (part, "proj", "kernel"), (w, cin, p, p),
          lambda a: a.transpose(2, 3, 1, 0).reshape(-1, a.shape[0]))
      add(f"{part}.proj.bias", (part, "proj", "bias"), (w,))
    add(f"{part}.pos_emb", (part, "pos_emb"), (1, w, g, g), lambda a: a[0].transpose(1, 2, 0))
    for i in range(arch["depth"]):
      b, path = f"{part}.blocks.{i}", (part, "blocks", i)
      norm(f"{b}.norm1", (*path, "norm1"), w)
      linear(f"{b}.attn.qkv", (*path, "qkv"), w, 3 * w)
      linear(f"{b}.attn.proj", (*path, "proj"), w, w)
      norm(f"{b}.norm2", (*path, "norm2"), w)
      linear(f"{b}.mlp.fc1", (*path, "fc1"), w, 4 * w)
      linear(f"{b}.mlp.fc2", (*path, "fc2"), 4 * w, w)
    if cfg.post_mlp:
      norm(f"{part}.norm_mlp", (part, "post_mlp", "norm"), w)
      linear(f"{part}.post_mlp.fc1", (part, "post_mlp", "fc1"), w, 4 * w)
      linear(f"{part}.post_mlp.fc2", (part, "post_mlp", "fc2"), 4 * w, w)
    if cout:
      linear(f"{part}.out_proj", (part, "out_proj"), w, cout * p * p)
    if cout and cfg.out_conv:
      for i in range(2):
        c, path = f"{part}.out_conv.{i}", (part, "out_conv", i)
        add(f"{c}.dwconv.weight", (*path, "dwconv", "kernel"), (cout, 1, 7, 7),
            lambda a: a.transpose(2, 3, 1, 0))
        add(f"{c}.dwconv.bias", (*path, "dwconv", "bias"), (cout,))
        norm(f"{c}.norm", (*path, "norm"), cout)
        linear(f"{c}.pwconv1", (*path, "pwconv1"), cout, 4 * cout)
        linear(f"{c}.pwconv2", (*path, "pwconv2"), 4 * cout, cout)
        add(f"{c}.gamma", (*path, "gamma"), (cout,))

  def mlp(part, arch, din, dout):
    w = arch["width"]
    linear(f"{part}.linear_in", (part, "linear_in"), din, w)
    for i in range(arch["depth"]):
      norm(f"{part}.layernorms.{i}", (part, "norms", i), w)
      linear(f"{part}.blocks.{i}.block.0", (part, "fc1", i), w, arch["wide"])
      linear(f"{part}.blocks.{i}.block.2", (part, "fc2", i), arch["wide"], w)
    linear(f"{part}.linear_out", (part, "linear_out"), w, dout)

  enc, dec = cfg.encoder_arch(), cfg.decoder_arch()
  if cfg.n_labels:
    add("cls_emb.weight", ("cls_emb",), (cfg.n_labels, cfg.n_channels))
  if enc["kind"] == "vit":
    vit("encoder", enc, cin=cfg.n_channels)
  else:
    mlp("encoder", enc, cfg.n_channels, enc["width"])
  conv1x1("quant_proj", ("quant_proj",), enc["width"], cfg.latent_dim)
  if cfg.quant_type == "lucid":
    add("quantize._codebook.embed", ("quantizer", "codebook"), (cfg.codebook_size, cfg.latent_dim))
  else:
    h, d = cfg.num_codebooks, cfg.latent_dim // cfg.num_codebooks
    add("quantize.codes", ("quantizer", "codes"), (h, cfg.codebook_size, d))
    add("quantize.to_k.weight", ("quantizer", "to_k"), (h, d, d))
    add("quantize.to_v.weight", ("quantizer", "to_v"), (h, d, d))
  if isinstance(cfg, DiVAEConfig):
    return out + unet_rules(cfg)
  conv1x1("post_quant_proj", ("post_quant_proj",), cfg.latent_dim, dec["width"])
  if dec["kind"] == "vit":
    vit("decoder", dec, cout=cfg.out_channels)
  else:
    mlp("decoder", dec, dec["width"], cfg.out_channels)
  return out


def unet_rules(cfg: DiVAEConfig) -> list[Rule]:
  """The rules of a DiVAE's patched UNet (`decoder.*`)."""
  out: list[Rule] = []
  conv = lambda a: a.transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)
  conv1d = lambda a: a[:, :, 0].T  # (O, I, 1) -> (I, O)

  def add(ref, path, shape, fn=lambda a: a):
    out.append((f"decoder.{ref}", ("decoder", *path), tuple(shape), fn))

  def params(ref, path, weight_shape, fn, bias):
    add(f"{ref}.weight", (*path, "scale" if fn is None else "kernel"), weight_shape,
        fn or (lambda a: a))
    add(f"{ref}.bias", (*path, "bias"), (bias,))

  def layer(spec, ref, path):
    kind, *sizes = spec
    if kind == "conv":
      params(ref, path, (sizes[1], sizes[0], 3, 3), conv, sizes[1])
    elif kind == "norm":
      params(ref, path, (sizes[0],), None, sizes[0])
    elif kind == "res":
      cin, cout = sizes
      params(f"{ref}.in_layers.0", (*path, "norm_in"), (cin,), None, cin)
      params(f"{ref}.in_layers.2", (*path, "conv_in"), (cout, cin, 3, 3), conv, cout)
      params(f"{ref}.emb_layers.1", (*path, "emb"), (cout, emb), lambda a: a.T, cout)
      params(f"{ref}.out_layers.0", (*path, "norm_out"), (cout,), None, cout)
      params(f"{ref}.out_layers.3", (*path, "conv_out"), (cout, cout, 3, 3), conv, cout)
      if cin != cout:
        params(f"{ref}.skip_connection", (*path, "skip"), (cout, cin, 1, 1), conv, cout)
    elif kind == "attn":
      (c,) = sizes
      params(f"{ref}.norm", (*path, "norm"), (c,), None, c)
      params(f"{ref}.qkv", (*path, "qkv"), (3 * c, c, 1), conv1d, 3 * c)
      params(f"{ref}.proj_out", (*path, "proj"), (c, c, 1), conv1d, c)
    else:  # down / up: one 3x3 conv.
      (c,) = sizes
      params(f"{ref}.{'op' if kind == 'down' else 'conv'}", (*path, "conv"), (c, c, 3, 3), conv,
             c)

  arch = cfg.decoder_arch()
  p, w = arch["patch"], arch["width"]
  emb = 4 * w
  plan_ = layout(arch, cfg.n_channels * p * p + cfg.latent_dim, cfg.n_channels * p * p)
  params("time_embed.0", ("time_in",), (emb, w), lambda a: a.T, emb)
  params("time_embed.2", ("time_out",), (emb, emb), lambda a: a.T, emb)
  for part in ("input_blocks", "output_blocks"):
    for i, block in enumerate(plan_[part]):
      for j, spec in enumerate(block):
        layer(spec, f"{part}.{i}.{j}", (part, i, j))
  for j, spec in enumerate(plan_["middle_block"]):
    layer(spec, f"middle_block.{j}", ("middle_block", j))
  layer(plan_["out"][0], "out.0", ("out_norm",))
  layer(plan_["out"][1], "out.2", ("out_conv",))
  return out


def model_class(cfg: Config | DiVAEConfig):
  return ReleasedDiVAE if isinstance(cfg, DiVAEConfig) else ReleasedVQVAE


def abstract_params(cfg: Config | DiVAEConfig) -> dict:
  model = nnx.eval_shape(lambda: model_class(cfg)(cfg, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _leaves(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, (*prefix, k))
  else:
    yield prefix, tree


def to_params(tensors: dict[str, np.ndarray], cfg: Config | DiVAEConfig, where: str) -> dict:
  """The model's parameters (a pure dict of float32 numpy arrays)."""
  expected = dict(_leaves(abstract_params(cfg)))
  params, used = {}, set()
  for ref, path, shape, fn in rules(cfg):
    if ref not in tensors:
      raise ConversionError(f"{where}: tensor {ref!r} is missing (the config's enc_type"
                            f" {cfg.enc_type!r} / dec_type {cfg.dec_type!r} / quantizer has it).")
    a = np.asarray(tensors[ref])
    if a.shape != shape:
      raise ConversionError(f"{where}: tensor {ref!r} has shape {a.shape}; the config"
                            f" ({cfg.enc_type}, {cfg.dec_type}, ...) needs {shape}.")
    value = np.ascontiguousarray(fn(a.astype(np.float32)))
    assert value.shape == tuple(expected[path].shape), (ref, path, value.shape)
    params[path] = value
    used.add(ref)
  unused = sorted(set(tensors) - used - set(IGNORED_BUFFERS))
  if unused:
    raise ConversionError(f"{where}: {len(unused)} tensor(s) the config does not account for,"
                          f" e.g. {unused[:4]} (another architecture than config.json's?).")
  assert set(params) == set(expected), set(expected) ^ set(params)
  tree: dict = {}
  for path, value in params.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = value
  return tree


def build(cfg: Config | DiVAEConfig, params: dict) -> ReleasedVQVAE | ReleasedDiVAE:
  """The model (ReleasedVQVAE or ReleasedDiVAE) holding `params` (its pure parameter dict)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: model_class(cfg)(cfg, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, params))
  return nnx.merge(graphdef, state)


def convert(src: str, allow_unknown_keys: bool = False
            ) -> tuple[ReleasedVQVAE | ReleasedDiVAE, Info]:
  """(the converted model, what was read) of a released tokenizer folder or file."""
  path, cfg_path = source_paths(src)
  tensors, ref_cfg = read_source(src)
  where = cfg_path if os.path.exists(cfg_path) else f"{path} (metadata)"
  cfg, ignored = plan(tensors, ref_cfg, where, allow_unknown_keys)
  model = build(cfg, to_params(tensors, cfg, path))
  return model, Info(path, where, dict(ref_cfg), ignored)


def _nhwc(a):
  return np.moveaxis(a, 1, -1) if a.ndim == 4 else a


def check(model: ReleasedVQVAE | ReleasedDiVAE, folder: str,
          runs: Sequence[str] | None = None) -> dict:
  """Largest differences between `model` and the reference run in `folder`.

  Per run (reference.npz; all, or those in `runs`), m4 encodes the reference's
  input and decodes the reference's tokens. Returns {"runs": {run: {...}}, "token_mismatches",
  "max_latent_diff", "max_code_diff", "max_reconstruction_diff", "ok"}; ok when
  every token id is equal and the differences are within LATENT_TOL, CODE_TOL
  and RECON_TOL.
  """
  if isinstance(model, ReleasedDiVAE):
    return check_divae(model, folder, runs)
  ref = dict(np.load(os.path.join(folder, "reference.npz")))
  run = nnx.jit(lambda m, x, t: (m.encode(x), m.decode(t)))
  found = sorted({k.split("__")[0] for k in ref})
  if runs is not None and set(runs) - set(found):
    raise ValueError(f"{folder}: no runs {sorted(set(runs) - set(found))}; it has {found}.")
  results = {}
  for r in runs if runs is not None else found:
    x = _nhwc(ref[f"{r}__input"])
    enc, rec = run(model, x.astype(np.int32) if x.dtype.kind in "iu" else x,
                   ref[f"{r}__tokens"].astype(np.int32))
    diff = lambda a, b: float(np.max(np.abs(np.asarray(a) - _nhwc(b))))
    results[r] = {"token_mismatches": int(np.sum(np.asarray(enc.tokens) != ref[f"{r}__tokens"])),
               "latent_diff": diff(enc.latents, ref[f"{r}__latents"]),
               "code_diff": diff(enc.codes, ref[f"{r}__codes"]),
               "reconstruction_diff": diff(rec, ref[f"{r}__reconstruction"])}
  top = lambda k: max(v[k] for v in results.values())
  report = {"runs": results,
            "token_mismatches": sum(v["token_mismatches"] for v in results.values()),
            "max_latent_diff": top("latent_diff"), "max_code_diff": top("code_diff"),
            "max_reconstruction_diff": top("reconstruction_diff")}
  report["ok"] = (report["token_mismatches"] == 0 and report["max_latent_diff"] <= LATENT_TOL
                  and report["max_code_diff"] <= CODE_TOL
                  and report["max_reconstruction_diff"] <= RECON_TOL)
  return report


def check_divae(model: ReleasedDiVAE, folder: str, runs: Sequence[str] | None = None) -> dict:
  """`check` for a DiVAE: per run, tokens, latents and codes of the reference's
  input; the UNet's output at one (x_t, t); the DDIM sample from the
  reference's x_T and number of steps; the schedule. ok when token ids are
  equal and the rest within LATENT_TOL, CODE_TOL, STEP_TOL, SAMPLE_TOL and
  SCHEDULE_TOL."""
  ref = dict(np.load(os.path.join(folder, "reference.npz")))
  found = sorted({k.split("__")[0] for k in ref})
  if runs is not None and set(runs) - set(found):
    raise ValueError(f"{folder}: no runs {sorted(set(runs) - set(found))}; it has {found}.")
  encode = nnx.jit(lambda m, x: m.encode(x))
  denoise = nnx.jit(lambda m, x, t, c: m.denoise(x, t, c))
  decode = nnx.jit(lambda m, tok, noise, steps: m.decode(tok, noise, steps),
                   static_argnames="steps")
  diff = lambda a, b: float(np.max(np.abs(np.asarray(a) - _nhwc(b))))
  results = {}
  for r in runs if runs is not None else found:
    g = lambda k: ref[f"{r}__{k}"]
    enc = encode(model, _nhwc(g("input")))
    tokens = g("tokens").astype(np.int32)
    step = denoise(model, _nhwc(g("step_x")), np.float32(g("step_t")), _nhwc(g("codes")))
    sample = decode(model, tokens, _nhwc(g("noise")), steps=int(g("steps")))
    sched = released_ddim.alphas_cumprod(model.cfg.schedule())
    ts = released_ddim.timesteps(model.cfg.num_train_timesteps, int(g("steps")))
    results[r] = {"token_mismatches": int(np.sum(np.asarray(enc.tokens) != g("tokens"))),
                  "latent_diff": diff(enc.latents, g("latents")),
                  "code_diff": diff(enc.codes, g("codes")),
                  "step_diff": diff(step, g("step_out")),
                  "sample_diff": diff(sample, g("sample")),
                  "schedule_diff": float(np.max(np.abs(sched - g("alphas_cumprod")))),
                  "timesteps_equal": bool(np.array_equal(ts, g("timesteps")))}
  top = lambda k: max(v[k] for v in results.values())
  report = {"runs": results,
            "token_mismatches": sum(v["token_mismatches"] for v in results.values()),
            **{f"max_{k}": top(k) for k in ("latent_diff", "code_diff", "step_diff",
                                            "sample_diff", "schedule_diff")},
            "timesteps_equal": all(v["timesteps_equal"] for v in results.values())}
  report["ok"] = (report["token_mismatches"] == 0 and report["timesteps_equal"]
                  and report["max_latent_diff"] <= LATENT_TOL
                  and report["max_code_diff"] <= CODE_TOL
                  and report["max_step_diff"] <= STEP_TOL
                  and report["max_sample_diff"] <= SAMPLE_TOL
                  and report["max_schedule_diff"] <= SCHEDULE_TOL)
  return report
