"""The any-to-any matrix of one pretrained model, from configs/generate/any2any.py runs.

    for s in rgb_pixels rgb depth semseg caption; do
      python -m m4.main --config=configs/generate/any2any.py:$s --workdir=ROOT/$s \
          --config.init=PRETRAIN_DIR [data overrides]
    done
    python experiments/any_to_any/matrix.py --root=ROOT --out=OUT.md [--name=...]
    python experiments/any_to_any/matrix.py --compare NAME=ROOT ... --out=OUT.md

A cell is the generated target's headline figure from that one input, its
chance level (the same outputs scored against another scene:
`<figure>/other_scene`) and the ceiling (the truth through the tokenizer).
Semseg has two figures: mIoU, which sky and ground alone lift to about 0.3,
and the mean IoU of the four object classes, which they do not; the caption
two: its (shape, colour) pairs, and its shapes alone (depth and semseg show
no colour). Writes the table (markdown) and every figure (OUT.json).
"""

import argparse
import json
import os

SOURCES = ("rgb_pixels", "rgb", "depth", "semseg", "caption")
TARGETS = ("rgb", "depth", "semseg", "caption")
OBJECTS = slice(2, 6)  # sphere, cube, cylinder, cone: the classes after sky and ground.
# target -> [(column name, metrics key or a function of the metrics, digits)]
FIGURES = {
    "rgb": [("PSNR dB", "psnr", 1)],
    "depth": [("δ1", "delta1", 3)],
    "semseg": [("mIoU", "miou", 3),
               ("objects' IoU", lambda m: sum(m["iou_per_class"][OBJECTS]) / 4, 3)],
    "caption": [("pair F1", "pair_f1", 3), ("shape F1", "shape_f1", 3)],
}


def _value(metrics, how):
  return how(metrics) if callable(how) else metrics[how]


def cells(root: str) -> dict:
  """{source: {target: {figure: {"generated", "chance", "ceiling"}}}} of the runs under root."""
  out = {}
  for source in SOURCES:
    path = os.path.join(root, source, "eval", "metrics.json")
    if not os.path.exists(path):
      continue
    metrics = json.load(open(path))
    row = out[source] = {}
    for target in TARGETS:
      label = f"{source}->{target}"
      if label not in metrics["generated"]:
        continue
      row[target] = {
          name: {"generated": _value(metrics["generated"][label], how),
                 "chance": _value(metrics["generated"][f"{label}/other_scene"], how),
                 "ceiling": _value(metrics["ceiling"][target], how)}
          for name, how, _ in FIGURES[target]}
  return out


def table(matrix: dict) -> str:
  columns = [(t, name, digits) for t in TARGETS for name, _, digits in FIGURES[t]]
  lines = ["| input | " + " | ".join(f"{t}: {name}" for t, name, _ in columns) + " |",
           "| --- |" + " ---: |" * len(columns)]
  ceilings = {}
  for source, row in matrix.items():
    shown = []
    for target, name, digits in columns:
      cell = row.get(target, {}).get(name)
      if cell is None:
        shown.append("–")
        continue
      ceilings[(target, name)] = f"{cell['ceiling']:.{digits}f}"
      shown.append(f"**{cell['generated']:.{digits}f}** ({cell['chance']:.{digits}f})")
    lines.append(f"| {source} | " + " | ".join(shown) + " |")
  lines.append("| ceiling | " + " | ".join(ceilings.get((t, n), "–") for t, n, _ in columns)
               + " |")
  return "\n".join(lines) + "\n"


# The cells `--compare` shows: (source, target, figure).
COMPARED = (("rgb_pixels", "semseg", "objects' IoU"), ("rgb", "semseg", "objects' IoU"),
            ("depth", "semseg", "objects' IoU"), ("depth", "rgb", "PSNR dB"),
            ("semseg", "depth", "δ1"), ("semseg", "rgb", "PSNR dB"),
            ("caption", "depth", "δ1"), ("caption", "semseg", "objects' IoU"))


def margins(models: dict) -> str:
  """One row per model: each compared cell's margin over its chance level."""
  lines = ["| model | " + " | ".join(f"{s} -> {t}: {f}" for s, t, f in COMPARED) + " |",
           "| --- |" + " ---: |" * len(COMPARED)]
  for name, matrix in models.items():
    shown = []
    for source, target, figure in COMPARED:
      cell = matrix.get(source, {}).get(target, {}).get(figure)
      digits = next(d for n, _, d in FIGURES[target] if n == figure)
      shown.append("–" if cell is None else f"{cell['generated'] - cell['chance']:+.{digits}f}")
    lines.append(f"| {name} | " + " | ".join(shown) + " |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", help="the folder of the five any2any runs")
  parser.add_argument("--compare", nargs="+", default=(), metavar="NAME=ROOT",
                      help="instead: several models' margins over chance, one row each")
  parser.add_argument("--out", required=True, help="OUT.md; OUT.json beside it")
  parser.add_argument("--name", default="", help="a heading line for the table")
  args = parser.parse_args()
  if args.compare:
    models = {n: cells(r) for n, r in (item.split("=", 1) for item in args.compare)}
    text = (f"{args.name}\n\n" if args.name else "") + margins(models)
    matrix = models
  else:
    matrix = cells(args.root)
    if not matrix:
      raise SystemExit(f"{args.root}: no <source>/eval/metrics.json of any of {SOURCES}.")
    text = (f"{args.name}\n\n" if args.name else "") + table(matrix)
  with open(args.out, "w") as f:
    f.write(text)
  with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
    json.dump({"roots": list(args.compare) or [os.path.abspath(args.root)], "cells": matrix},
              f, indent=1)
  print(text)


if __name__ == "__main__":
  main()
