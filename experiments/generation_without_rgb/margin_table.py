"""Caption -> semseg presence against its chance level, per pretraining arm and decoding.

    python experiments/generation_without_rgb/margin_table.py --root=/work/runs/gw \
        --arms=control_s0,cb_s0 [--out=caption_margins.json]

Reads the generate job's `eval/metrics.json` under ROOT: `c2s_<arm>` (test,
MaskGIT), `c2sroar_<arm>` (test, ROAR), `val_<scheme>_<arm>` (validation),
and prints presence precision / recall / F1, the F1 of the same maps against
another scene's caption, and the margin between the two. Absent runs print "-".
"""

import argparse
import json
import os

RUNS = (("test, MaskGIT", "c2s_{}"), ("test, ROAR", "c2sroar_{}"),
        ("validation, MaskGIT", "val_maskgit_{}"), ("validation, ROAR", "val_roar_{}"))


def figures(path):
  with open(path) as f:
    generated = json.load(f)["generated"]
  own = generated["caption->semseg/presence"]
  other = generated["caption->semseg/presence/other_scene"]
  return dict(precision=own["presence_precision"], recall=own["presence_recall"],
              f1=own["presence_f1"], other_scene_f1=other["presence_f1"],
              margin=own["presence_f1"] - other["presence_f1"],
              miou=generated["caption->semseg"]["miou"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", required=True)
  parser.add_argument("--arms", required=True, help="comma-separated run names")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  table = {}
  for arm in args.arms.split(","):
    table[arm] = {}
    cells = []
    for label, pattern in RUNS:
      path = os.path.join(args.root, pattern.format(arm), "eval", "metrics.json")
      row = figures(path) if os.path.exists(path) else None
      table[arm][label] = row
      cells.append(f"{label}: " + ("-" if row is None else
                   "{precision:.3f}/{recall:.3f}/{f1:.3f} other {other_scene_f1:.3f} "
                   "margin {margin:+.3f}".format(**row)))
    print(f"{arm:15s} " + " | ".join(cells))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(table, f, indent=1)


if __name__ == "__main__":
  main()
