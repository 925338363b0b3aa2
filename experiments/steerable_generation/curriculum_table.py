"""The table of a `steering_quick.py:curriculum` run, or of several (seeds).

    python experiments/steerable_generation/curriculum_table.py WORKDIR [WORKDIR ...] [--json OUT]

For each phase (the map part, the text whole) and decoding (MaskGIT, one
greedy step): the box hit rate, presence F1 and count accuracy of semseg
drawn from the boxes text on the test scenes (the gen stages'
`eval/metrics.json`), and the phase's last validation RGB -> semseg mIoU
(decoded); with several workdirs, each one's figures and their mean ± std (sample std).
"""

import argparse
import json
import os

import numpy as np

ARMS = ("map", "whole")
DECODINGS = ("maskgit", "greedy")
FIGURES = {"hit rate": ("boxes->semseg/boxes", "box_hit_rate"),
           "presence F1": ("boxes->semseg/presence", "presence_f1"),
           "count": ("boxes->semseg/count", "count_accuracy")}
VALIDATION = "cross_modal/rgb_pixels_to_semseg/decoded/miou"


def _read(path):
  """A JSON file, or the complete lines of a JSON-lines file."""
  if not os.path.exists(path):
    raise SystemExit(f"curriculum_table: {path} does not exist (has the stage run?)")
  with open(path) as f:
    if path.endswith(".json"):
      return json.load(f)
    lines = []
    for line in f:
      try:
        lines.append(json.loads(line))
      except json.JSONDecodeError:  # A line being written.
        pass
    return lines


def figures(workdir: str) -> dict:
  """{arm: {decoding: {figure: value}, "validation miou": value}}."""
  out = {}
  for arm in ARMS:
    row = {}
    for decoding in DECODINGS:
      metrics = _read(os.path.join(workdir, f"gen_boxes_{arm}_{decoding}", "eval", "metrics.json"))
      row[decoding] = {name: metrics["generated"][group][key]
                       for name, (group, key) in FIGURES.items()}
    evals = [m for m in _read(os.path.join(workdir, f"phase_{arm}", "metrics.jsonl"))
             if VALIDATION in m]
    if not evals:
      raise SystemExit(f"curriculum_table: no {VALIDATION} in {workdir}/phase_{arm}/metrics.jsonl")
    row["validation miou"] = evals[-1][VALIDATION]
    out[arm] = row
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--json", default="", help="also write the figures here")
  a = p.parse_args()
  runs = {w: figures(w) for w in a.workdirs}
  print("| phase | decoding | " + " | ".join(FIGURES) + " |\n| --- | --- |" + " ---: |" * len(FIGURES))
  for arm in ARMS:
    for decoding in DECODINGS:
      cells = []
      for name in FIGURES:
        values = [r[arm][decoding][name] for r in runs.values()]
        each = " / ".join(f"{v:.3f}" for v in values)
        cells.append(each if len(values) == 1 else
                     f"{each} ({np.mean(values):.3f} ± {np.std(values, ddof=1):.3f})")
      print(f"| {arm} | {decoding} | " + " | ".join(cells) + " |")
  for arm in ARMS:
    print(f"validation RGB -> semseg mIoU, {arm}: " +
          " / ".join(f"{r[arm]['validation miou']:.3f}" for r in runs.values()))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(runs, f, indent=1)


if __name__ == "__main__":
  main()
