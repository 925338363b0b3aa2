"""Draw the boxes you write: a boxes text -> its box map -> semseg -> RGB.

    PYTHONPATH=. python experiments/steerable_generation/draw_boxes.py \
        --run=workdirs/steering_quick_boxmap2semseg \
        --boxes="sphere 8 30 24 46 cube 28 28 44 44 cone 46 22 60 44"

A model pretrained with `box_map` among its inputs (steering_quick.py's
box_map variants) draws semseg where the text's boxes are, then RGB from
that map (MaskGIT 8 steps, guidance 2, as the gen_boxes stage). Writes
draw_boxes.png (box map | semseg | RGB, one row per seed) in the run.
"""

import argparse
import os

import numpy as np

from m4 import generation
from m4 import pictures
from m4 import tokenizers
from m4.data import scene_sequences
from m4.models import pretrained


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--run", required=True, help="a chain workdir: pretrain/ and tok_*/ in it")
  p.add_argument("--boxes", required=True, help="'shape x0 y0 x1 y1 ...' in 64 bins")
  p.add_argument("--seeds", type=int, default=4)
  args = p.parse_args()
  model = pretrained.load(os.path.join(args.run, "pretrain"))
  semseg = tokenizers.load(os.path.join(args.run, "tok_semseg"))
  rgb = tokenizers.load(os.path.join(args.run, "tok_rgb"))
  drawn = scene_sequences.box_map(args.boxes, tuple(semseg.image_size))
  if not scene_sequences.regions("boxes", args.boxes):
    raise SystemExit(f"--boxes: cannot read {args.boxes!r} as 'shape x0 y0 x1 y1 ...'.")
  gen = generation.Generator(model)
  steps = [generation.Step(name, "maskgit", num_steps=8, temperature=0.5, temperature_schedule="linear",
                           cfg_scale=2.0, cfg_conditions=("box_map",))
           for name in ("semseg", "rgb")]
  rows = []
  for seed in range(args.seeds):
    state = {"box_map": generation.image_entry("box_map", semseg.encode(drawn[None]))}
    result = gen.generate(state, steps, seed=seed)
    tokens = {n: np.asarray(result.state[n]["tensor"]).reshape((1,) + tuple(semseg.grid))
              for n in ("semseg", "rgb")}
    rows.append({"box map": drawn, "semseg": np.asarray(semseg.decode(tokens["semseg"]))[0],
                 "rgb": np.asarray(rgb.decode(tokens["rgb"]))[0]})
  path = pictures.save_grid(os.path.join(args.run, "draw_boxes.png"), rows,
                            [f"seed {s}: {args.boxes}" for s in range(args.seeds)],
                            kinds={"box map": "semseg", "semseg": "semseg", "rgb": "rgb"})
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
