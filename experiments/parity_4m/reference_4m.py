"""Imports apple/ml-4m's tokenizer code without its heavy dependencies, for reference runs.

`import_fourm(ml4m)` imports `fourm.vq.vqvae` and `fourm.data.modality_transforms`
from a clone, with the modules the tokenizers do not use (the UViT /
ControlNet decoders, torchvision, cv2, albumentations) replaced by empty stubs
and `diffusers` by stubs of the few names the UNet, schedulers and pipeline
use. `register_presets` / `register_unet_presets` add test-size ViTs and UNets
under m4's preset names; `perturb` moves every weight off its initial value;
`margins` says how clearly each token id wins. No ml-4m code lives here.
"""

import functools
import inspect
import json
import os
import sys
import types

import numpy as np
import torch

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


def register_unet_presets(unet, configs):
  """unet_p<p>_c<w>_r<n>_m<mults>_a<factors> -> the reference's PatchedUNetCondCat."""
  for cfg in configs:
    name = cfg["dec_type"]
    p, c, r, m, a = name.split("_")[1:]
    kw = dict(patch_size=int(p[1:]), model_channels=int(c[1:]), num_res_blocks=int(r[1:]),
              channel_mult=tuple(int(v) for v in m[1:].split("-")),
              attention_resolutions=[int(v) for v in a[1:].split("-") if v])
    setattr(unet, name, lambda _kw=kw, **k: unet.PatchedUNetCondCat(**_kw, **k))


def save_fixture(out, name, state, cfg, arrays, compressed=False):
  """A fixture folder in a release's layout (`model.safetensors`, `config.json`)
  plus `reference.npz`; refuses an existing folder. Returns its path."""
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  folder = os.path.join(out, name)
  os.makedirs(folder, exist_ok=False)
  save_file(state, os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
  (np.savez_compressed if compressed else np.savez)(os.path.join(folder, "reference.npz"), **arrays)
  return folder
