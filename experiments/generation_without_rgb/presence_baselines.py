"""Trivial baselines for caption -> semseg object presence, on a scenes split.

    python experiments/generation_without_rgb/presence_baselines.py --data=DIR [--split=test] [--num=256]

Presence F1 scores the shape classes a generated map holds against those the
caption names. A map that draws nothing scores 0; one that draws every
shape class scores recall 1 at the split's base rate of precision; one that
draws the split's most frequent shape class scores that class's share. A
generator has drawn what the caption says only where it beats these.
"""

import argparse
import json

import numpy as np

from m4.data import scene_captions
from m4.data import scene_spec
from m4.data import scene_store
from m4.generation import quality


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data", required=True)
  p.add_argument("--split", default="test")
  p.add_argument("--num", type=int, default=256)
  args = p.parse_args()
  source = scene_store.ScenesSource(args.data, args.split)
  n = min(args.num, len(source))
  named = np.zeros((n, len(scene_spec.SHAPES)), bool)
  for i in range(n):
    for _, _, s in scene_captions.parse_caption(str(source[i]["caption"])):
      named[i, s] = True
  tp_all, fp_all, fn_all = named.sum(), (~named).sum(), 0
  top = int(np.argmax(named.sum(0)))
  tp_top, fp_top = named[:, top].sum(), (~named[:, top]).sum()
  fn_top = named.sum() - tp_top
  out = {"split": args.split, "scenes": n,
         "shape_share": [round(float(x), 3) for x in named.mean(0)],
         "every_shape": quality.presence_figures(dict(tp=tp_all, fp=fp_all, fn=fn_all)),
         "most_frequent_shape": quality.presence_figures(dict(tp=tp_top, fp=fp_top, fn=fn_top))}
  print(json.dumps(out, default=float))


if __name__ == "__main__":
  main()
