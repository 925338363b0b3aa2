"""A PNG of 4M's masking on real samples: what the encoder sees, what the decoder predicts.

    python -m m4.tools.mask_grid --data workdirs/scenes/data --split validation --num 6 \
        --preset 4m7 --num_input_tokens 64 --num_target_tokens 64 --out masks.png \
        [--stats 1000]

One row per sample: for each image modality its input tokens (the cells the
encoder sees; the rest grey), then its target tokens; under the row the token
counts and the caption's input and target, sentinels shown. Image masks do not
depend on token values, so the raw images stand in for their token grids and
no VQ tokenizer is needed. `--stats N` also prints the mean input and target
tokens per modality over N samples (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Mapping, Sequence

import numpy as np

from m4.data import masking
from m4.data import scenes
from m4 import pictures

_GREY = 225


def _cells(image: np.ndarray, mask: np.ndarray, grid_hw) -> np.ndarray:
  """`image` (H, W, 3) uint8 where `mask` (h*w,) selects its token cell, else grey."""
  h, w = image.shape[:2]
  rows = np.arange(h) * grid_hw[0] // h
  cols = np.arange(w) * grid_hw[1] // w
  selected = mask.reshape(grid_hw)[rows][:, cols]
  return np.where(selected[..., None], image, np.uint8(_GREY)).astype(np.uint8)


def mask_rows(masker: masking.Masking, samples: Sequence[Mapping], *, seed: int = 0):
  """Grid rows and captions for raw `samples` masked by `masker`."""
  rows, captions = [], []
  for i, raw in enumerate(samples):
    sample = dict(raw)
    for m in masker.modalities:  # Placeholder tokens: masks ignore their values.
      if m.is_image and m.data_key in raw:
        sample[m.data_key] = np.zeros(m.grid, np.int32)
    out = masker.mask_with_seed(sample, seed=seed, index=i)
    row, counts, text = {}, [], ""
    for m in masker.modalities:
      entry = out[m.name]
      n_in, n_tgt = int(entry["input_mask"].sum()), int(entry["target_mask"].sum())
      counts.append(f"{m.name} {n_in}/{n_tgt}")
      if m.is_image:
        if m.data_key not in raw:
          row[f"{m.name} in"] = row[f"{m.name} target"] = None
          continue
        kind = m.data_key if m.data_key in pictures.KINDS else pictures.guess_kind(m.name, raw[m.data_key])
        image = pictures.to_image(raw[m.data_key], kind)
        row[f"{m.name} in"] = _cells(image, entry["input_mask"], m.grid)
        row[f"{m.name} target"] = _cells(image, entry["target_mask"], m.grid)
      elif m.name in masker.text_tokenizers:
        tok = masker.text_tokenizers[m.name]
        t = entry["tensor"]
        text = (f" | {m.name} in: \"{tok.decode(t[entry['input_mask']], keep_sentinels=True)}\""
                f" target: \"{tok.decode(t[entry['target_mask']], keep_sentinels=True)}\"")
    rows.append(row)
    captions.append("in/target tokens: " + ", ".join(counts) + text)
  return rows, captions


def save_mask_grid(path: str, masker: masking.Masking, samples: Sequence[Mapping], *,
                   seed: int = 0) -> str:
  rows, captions = mask_rows(masker, samples, seed=seed)
  kinds = {k: "rgb" for row in rows for k in row}
  return pictures.save_grid(path, rows, captions, kinds, max_caption_lines=4)


def token_stats(masker: masking.Masking, samples: Sequence[Mapping], *, seed: int = 0) -> dict:
  """Mean input and target tokens per modality, and masking samples/s."""
  rows = []
  start = time.perf_counter()
  for i, raw in enumerate(samples):
    sample = dict(raw)
    for m in masker.modalities:
      if m.is_image and m.data_key in raw:
        sample[m.data_key] = np.zeros(m.grid, np.int32)
    out = masker.mask_with_seed(sample, seed=seed, index=i)
    rows.append([[out[n]["input_mask"].sum(), out[n]["target_mask"].sum()] for n in masker.names])
  seconds = time.perf_counter() - start
  counts = np.array(rows, np.float64)  # (samples, modalities, 2)
  return {"samples": len(samples), "samples_per_sec": len(samples) / seconds,
          "inputs": dict(zip(masker.names, counts[:, :, 0].mean(0).round(2).tolist())),
          "targets": dict(zip(masker.names, counts[:, :, 1].mean(0).round(2).tolist())),
          "inputs_total": float(counts[:, :, 0].sum(1).mean()),
          "targets_total": float(counts[:, :, 1].sum(1).mean())}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m m4.tools.mask_grid",
                              description=__doc__.split("\n", maxsplit=1)[0])
  p.add_argument("--data", required=True, help="a scenes dataset directory")
  p.add_argument("--split", default="validation")
  p.add_argument("--num", type=int, default=6, help="samples (rows)")
  p.add_argument("--preset", default="4m7", help="masking.preset name: 4m7 | all2all")
  p.add_argument("--num_input_tokens", type=int, default=64)
  p.add_argument("--num_target_tokens", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True, help="PNG path")
  p.add_argument("--stats", type=int, default=0,
                 help="also print mean input/target tokens per modality over this many samples")
  args = p.parse_args(argv)
  source = scenes.ScenesSource(args.data, args.split)
  samples = [source[i] for i in range(min(args.num, len(source)))]
  masker = masking.Masking(masking.preset(args.preset, num_input_tokens=args.num_input_tokens,
                                          num_target_tokens=args.num_target_tokens))
  print(save_mask_grid(args.out, masker, samples, seed=args.seed))
  if args.stats:
    many = [source[i] for i in range(min(args.stats, len(source)))]
    print(json.dumps(token_stats(masker, many, seed=args.seed)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
