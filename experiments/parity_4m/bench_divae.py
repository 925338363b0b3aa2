"""Times a released-size 4M DiVAE tokenizer's DDIM decode in m4 (random weights).

    python experiments/parity_4m/bench_divae.py --image_size=224 --steps=5 --ml4m=/tmp/ml4m

The shape is RGB 16k's (ViT-B/16 encoder with tanh post-MLP, positions for
448 px, lucid 16384 x 32; `unet_patched` decoder: patch 4, width 256, 3
ResBlocks a level, widths x(1, 2, 2, 2), attention at factors 4 and 8; x0
prediction, linear betas, zero terminal SNR, thresholding). Times
`tok.decode(tokens, steps=N, seed=0)` (host checks, the jitted sampler, the
image back on the host; float32) after one warm-up call (compilation, reported
apart), and `tok.encode`. With `--ml4m`, also the reference's
`DiVAE.decode_tokens(tokens, timesteps=N)` with its DDIMScheduler (torch,
eval, no_grad; imported through reference_4m.py). Prints one JSON
line. N trailing steps of 1000 are N UNet calls when N divides 1000.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from m4.tokenizers import released_tokenizer as rt  # noqa: E402
from m4.tokenizers.released_divae import DiVAEConfig, ReleasedDiVAE  # noqa: E402

RGB_16K = dict(enc_type="vit_b_enc", dec_type="unet_patched", n_channels=3, image_size=448,
               patch_size=16, post_mlp=True, codebook_size=16384, latent_dim=32,
               scheduler="ddim", beta_schedule="linear", prediction_type="sample",
               thresholding=True, zero_terminal_snr=True)


def timed(fn):
  t = time.perf_counter()
  np.asarray(fn())
  return time.perf_counter() - t


def reference_seconds(ml4m, tokens, size, steps):
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, HERE)
  import reference_4m  # pylint: disable=g-import-not-at-top
  vqvae, _, _ = reference_4m.import_fourm(ml4m)
  model = vqvae.DiVAE(**RGB_16K, sync_codebook=False).eval()
  tt = torch.from_numpy(tokens.astype(np.int64))
  with torch.no_grad():
    t = time.perf_counter()
    model.decode_tokens(tt, timesteps=steps, image_size=size, verbose=False,
                        generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - t, torch.__version__, torch.get_num_threads()


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--ml4m", default="", help="An apple/ml-4m checkout: also time the reference.")
  args = ap.parse_args()
  cfg = DiVAEConfig(**RGB_16K)
  model = ReleasedDiVAE(cfg, rngs=nnx.Rngs(0))
  s = args.image_size
  tok = rt.ReleasedTokenizer(model, rt.ReleasedSpec(name="rgb16k", modality="rgb",
                                                    image_size=(s, s), model=cfg.to_json()))
  x = np.random.default_rng(0).integers(0, 256, (1, s, s, 3)).astype(np.uint8)
  enc_first, enc = timed(lambda: tok.encode(x)), timed(lambda: tok.encode(x))
  tokens = np.asarray(tok.encode(x))
  dec_first = timed(lambda: tok.decode(tokens, steps=args.steps, seed=0))
  dec = timed(lambda: tok.decode(tokens, steps=args.steps, seed=1))
  params = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  out = {"image_size": s, "batch": 1, "steps": args.steps, "params": int(params),
         "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
         "encode_s": round(enc, 2), "first_encode_s": round(enc_first, 2),
         "decode_s": round(dec, 2), "decode_s_per_step": round(dec / args.steps, 2),
         "first_decode_s": round(dec_first, 2)}
  if args.ml4m:
    ref, version, threads = reference_seconds(args.ml4m, tokens, s, args.steps)
    out.update(reference_decode_s=round(ref, 2),
               reference_decode_s_per_step=round(ref / args.steps, 2), torch=version,
               torch_threads=threads)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
