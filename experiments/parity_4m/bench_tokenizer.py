"""Times a released-size 4M VQ-VAE tokenizer in m4 (random weights): encode and decode.

    python experiments/parity_4m/bench_tokenizer.py --shape=semseg --image_size=224

Shapes (the released configs' sizes; weights are random, speed does not care):
`semseg` (COCO semseg 4k: ViT-B/16 encoder and decoder, tanh post-MLPs, 64-dim
class embedding, 134 logits per pixel, lucid 4096 x 32, positions for 448 px
resized to the grid) and `clip` (CLIP-B/16 8k: the same ViTs on a 512-channel
feature map at image size / 16, lucid 8192 x 32). Times the tokenizer's public
calls (host checks, jitted model, results back on the host), float32, after one
warm-up call (compilation, reported apart). With `--ml4m=/tmp/ml4m`, also times
the reference's `VQVAE.encode` / `decode_tokens` (torch, eval, no_grad; imported
through reference_4m.py) on the same inputs. Prints one JSON line.
"""

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from m4.tokenizers import released_tokenizer as rt  # noqa: E402
from m4.tokenizers.released_vqvae import Config, ReleasedVQVAE  # noqa: E402

SHAPES = {
    "semseg": ("semseg", dict(enc_type="vit_b_enc", dec_type="vit_b_dec", n_channels=64,
                              n_labels=134, image_size=448, patch_size=16, post_mlp=True,
                              codebook_size=4096, latent_dim=32)),
    "clip": ("feature", dict(enc_type="vit_b_enc", dec_type="vit_b_dec", n_channels=512,
                             image_size=448, patch_size=16, patch_proj=False, post_mlp=True,
                             codebook_size=8192, latent_dim=32)),
}


def timed(fn, reps):
  t = time.perf_counter()
  np.asarray(fn())
  first = time.perf_counter() - t
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    np.asarray(fn())
    times.append(time.perf_counter() - t)
  return first, statistics.median(times)


def reference_times(ml4m, kw, modality, x, tokens, reps):
  """The reference VQVAE's encode / decode_tokens seconds per batch (median)."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import reference_4m  # pylint: disable=g-import-not-at-top
  vqvae, _, _ = reference_4m.import_fourm(ml4m)
  model = vqvae.VQVAE(**kw, sync_codebook=False).eval()
  if modality == "semseg":
    xt = torch.from_numpy(np.where(x == 255, 0, x + 1).astype(np.int64))
  else:
    xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
  tt = torch.from_numpy(tokens.astype(np.int64))
  with torch.no_grad():
    _, enc = timed(lambda: model.encode(xt)[2], reps)
    _, dec = timed(lambda: model.decode_tokens(tt), reps)
  b = len(x)
  return {"reference_encode_s": round(enc, 3), "reference_decode_s": round(dec, 3),
          "reference_encode_images_per_s": round(b / enc, 2),
          "reference_decode_images_per_s": round(b / dec, 2),
          "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--shape", choices=sorted(SHAPES), default="semseg")
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--ml4m", default="", help="An apple/ml-4m checkout: also time the reference.")
  args = ap.parse_args()
  modality, kw = SHAPES[args.shape]
  cfg = Config(**kw)
  model = ReleasedVQVAE(cfg, rngs=nnx.Rngs(0))
  spec = rt.ReleasedSpec(name=args.shape, modality=modality,
                         image_size=(args.image_size,) * 2, model=cfg.to_json())
  tok = rt.ReleasedTokenizer(model, spec)
  rng = np.random.default_rng(0)
  b, s, g = args.batch, args.image_size, args.image_size // cfg.patch_size
  if modality == "semseg":
    x = rng.integers(0, 133, (b, s, s)).astype(np.int32)
  else:
    x = rng.normal(size=(b, g, g, cfg.n_channels)).astype(np.float32)
  enc_first, enc = timed(lambda: tok.encode(x), args.reps)
  tokens = np.asarray(tok.encode(x))
  dec_first, dec = timed(lambda: tok.decode(tokens), args.reps)
  params = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  ref = reference_times(args.ml4m, kw, modality, x, tokens, args.reps) if args.ml4m else {}
  print(json.dumps({**ref,
      "shape": args.shape, "image_size": s, "grid": g, "batch": b, "params": int(params),
      "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
      "encode_s": round(enc, 3), "decode_s": round(dec, 3),
      "encode_images_per_s": round(b / enc, 2), "decode_images_per_s": round(b / dec, 2),
      "first_encode_s": round(enc_first, 2), "first_decode_s": round(dec_first, 2)}))


if __name__ == "__main__":
  main()
