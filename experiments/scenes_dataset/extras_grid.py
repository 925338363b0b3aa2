"""Draws rgb | normals | instance | edges | rgb_edges | palette of scenes samples.

    PYTHONPATH=. python experiments/scenes_dataset/extras_grid.py \
        --out experiments/scenes_dataset/extras_grid.png
"""

import argparse

from m4.data import scenes


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="experiments/scenes_dataset/extras_grid.png")
  p.add_argument("--num", type=int, default=8)
  p.add_argument("--split", default="validation")
  p.add_argument("--resolution", type=int, default=scenes.SceneSpec.resolution)
  p.add_argument("--seed", type=int, default=scenes.SceneSpec.seed)
  args = p.parse_args()
  path = scenes.extras_grid(args.out, args.num, args.split, resolution=args.resolution,
                            seed=args.seed)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
