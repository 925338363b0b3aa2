"""Markdown tables of generate runs: quality vs the tokenizer ceiling, and speed.

    python experiments/generation/collect.py workdirs/generate/rgb2all \
        workdirs/generate/caption2semseg2rgb ... [--grids experiments/generation]

Reads each DIR/eval/metrics.json (written by the `generate` trainer) and, with
--grids, copies DIR/grid.png to <grids>/<basename of DIR>.png.
"""

import argparse
import json
import os
import shutil

# (metric key, shown as, higher is better)
METRICS = [("delta1", "δ1", True), ("abs_rel", "abs-rel", False), ("miou", "mIoU", True),
           ("pixel_accuracy", "pixel acc.", True), ("pair_precision", "pair precision", True),
           ("pair_recall", "pair recall", True), ("pair_f1", "pair F1", True),
           ("presence_precision", "presence precision", True),
           ("presence_recall", "presence recall", True), ("presence_f1", "presence F1", True),
           ("psnr", "PSNR (dB)", True)]


def _ceiling_key(label: str) -> str:
  """"rgb->depth" -> "depth"; "caption->semseg/presence" -> "semseg/presence"."""
  target = label.split("->", 1)[1]
  return target


def main():
  p = argparse.ArgumentParser()
  p.add_argument("runs", nargs="+")
  p.add_argument("--grids", default="")
  args = p.parse_args()
  quality = ["| run | task | metric | generated | tokenizer ceiling |", "|---|---|---|---:|---:|"]
  speed = ["| run | target | decoding | s / sample |", "|---|---|---|---:|"]
  for run in args.runs:
    name = os.path.basename(os.path.normpath(run))
    m = json.load(open(os.path.join(run, "eval", "metrics.json")))
    for label, figs in m["generated"].items():
      ceiling = m["ceiling"].get(_ceiling_key(label), {})
      for key, shown, _ in METRICS:
        if key in figs:
          c = ceiling.get(key)
          quality.append(f"| {name} | {label.split('/')[0]} | {shown} | {figs[key]:.3f} |"
                         f" {'' if c is None else f'{c:.3f}'} |")
    for target, seconds in m["seconds_per_sample"].items():
      speed.append(f"| {name} | {target} | {m['decoding'][target]} | {seconds:.3f} |")
    if args.grids:
      shutil.copy(os.path.join(run, "grid.png"), os.path.join(args.grids, f"{name}.png"))
  print("\n".join(quality))
  print()
  print("\n".join(speed))


if __name__ == "__main__":
  main()
