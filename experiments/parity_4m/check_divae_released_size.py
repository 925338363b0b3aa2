"""Checks m4's DiVAE against the reference at the released size (random weights).

    python experiments/parity_4m/check_divae_released_size.py --ml4m=/tmp/ml4m --image_size=64

Builds the reference `DiVAE` with RGB 16k's shape (bench_divae.RGB_16K: ViT-B/16
encoder, `unet_patched`; 288M numbers), moves every tensor off its initial
value (reference_4m.perturb: the UNet's zero-initialised output
convolutions would otherwise hide a mix-up), writes it in the released layout
to a temporary folder, converts it with m4, and compares on one small image:
token ids, and the UNet's output at t = 500 and at t = 999 from the same x_t.
Prints one JSON line. Nothing is stored: the weights are ~1.2 GB.
"""

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

import bench_divae  # noqa: E402
import reference_4m  # noqa: E402
from m4.tokenizers import released_convert  # noqa: E402


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--ml4m", required=True)
  ap.add_argument("--image_size", type=int, default=64)
  args = ap.parse_args()
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(0)
  vqvae, _, _ = reference_4m.import_fourm(args.ml4m)
  cfg = dict(bench_divae.RGB_16K, sync_codebook=False)
  model = vqvae.DiVAE(**cfg).eval()
  reference_4m.perturb(model, gen)
  s = args.image_size
  x = torch.rand((1, 3, s, s), generator=gen) * 2 - 1
  x_t = torch.randn((1, 3, s, s), generator=gen)
  with torch.no_grad():
    quant, _, tokens = model.encode(x)
    outs = {t: model.decoder(x_t, torch.tensor(t), quant).numpy() for t in (500, 999)}
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(cfg, f)
    del model
    m4_model, _ = released_convert.convert(tmp)
  nhwc = lambda a: np.moveaxis(np.asarray(a), 1, -1)
  enc = nnx.jit(lambda m, v: m.encode(v))(m4_model, nhwc(x))
  step = nnx.jit(lambda m, v, t, c: m.denoise(v, t, c))
  report = {"image_size": s, "token_mismatches": int((np.asarray(enc.tokens)
                                                       != tokens.numpy()).sum()),
            "max_code_diff": float(np.abs(np.asarray(enc.codes) - nhwc(quant)).max())}
  for t, want in outs.items():
    got = step(m4_model, nhwc(x_t), np.float32(t), nhwc(quant))
    report[f"max_step_diff_t{t}"] = float(np.abs(np.asarray(got) - nhwc(want)).max())
    report[f"max_abs_output_t{t}"] = float(np.abs(want).max())
  print(json.dumps(report))


if __name__ == "__main__":
  main()
