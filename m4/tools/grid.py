"""Draws samples of a scenes dataset as a PNG grid (m4.data.scenes.grid).

    python -m m4.tools.grid --data DIR --split validation --num 8 --out grid.png
"""

from __future__ import annotations

import argparse
import sys

from m4.data import scenes


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m m4.tools.grid",
                              description="Draws samples of a scenes dataset as a PNG grid.")
  p.add_argument("--data", required=True, help="scenes dataset directory")
  p.add_argument("--split", default="validation")
  p.add_argument("--num", type=int, default=8, help="rows")
  p.add_argument("--start", type=int, default=0, help="first sample index")
  p.add_argument("--out", required=True, help="PNG to write")
  args = p.parse_args(argv)
  try:
    path = scenes.grid(args.out, args.data, args.split, args.num, args.start)
  except (FileNotFoundError, ValueError) as e:
    print(f"m4.tools.grid: error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
