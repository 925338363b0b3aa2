"""Tables and curves of pretraining runs' cross-modal figures (held-out).

    python experiments/pretrain_objects/collect.py --out experiments/pretrain_objects \
        NAME=WORKDIR [NAME=WORKDIR ...] [--oracle NAME=OUT_DIR ...]

For each pretraining workdir, the last evaluation's RGB -> semseg token
accuracy, the decoded map's mIoU and IoU per class, RGB -> depth delta1 and
the run's seconds (eval/final.json); for each oracle
(experiments/pretrain_objects/oracle.py) its last evaluation. Writes
OUT/ablations.md (a markdown table) and OUT/curves.png (mIoU and depth
delta1 against training samples seen).
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

CLASSES = ("sky", "ground", "sphere", "cube", "cylinder", "cone")


def _rows(workdir: str):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  with open(os.path.join(workdir, "config.json")) as f:
    batch = json.load(f)["data"]["batch_size"]
  return [r for r in rows if any(k.startswith("cross_modal/") for k in r)], batch


def _figures(r: dict) -> dict:
  src = next(k for k in r if k.startswith("cross_modal/")).split("/")[1].split("_to_")[0]
  g = lambda k: r.get(f"cross_modal/{src}_to_{k}")
  return {"semseg_acc": g("semseg/accuracy"), "miou": g("semseg/decoded/miou"),
          "iou": [g(f"semseg/decoded/iou_per_class/{c}") for c in range(len(CLASSES))],
          "delta1": g("depth/decoded/delta1")}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("runs", nargs="*", help="NAME=WORKDIR")
  p.add_argument("--oracle", action="append", default=[], help="NAME=OUT_DIR")
  p.add_argument("--out", required=True)
  args = p.parse_args()
  fmt = lambda x: "" if x is None else f"{x:.3f}"
  lines = ["| run | steps | batch | seconds | semseg token acc | mIoU | "
           + " | ".join(f"IoU {c}" for c in CLASSES[2:]) + " | depth δ1 |",
           "|" + "---|" * (7 + len(CLASSES) - 2)]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
  colors = iter(plt.cm.tab20(range(20)))
  for item in args.runs:
    name, workdir = item.split("=", 1)
    rows, batch = _rows(workdir)
    with open(os.path.join(workdir, "eval", "final.json")) as f:
      seconds = json.load(f).get("seconds")
    last = _figures(rows[-1])
    lines.append(f"| {name} | {rows[-1]['step']} | {batch} | {seconds:.0f} | "
                 f"{fmt(last['semseg_acc'])} | {fmt(last['miou'])} | "
                 + " | ".join(fmt(v) for v in last["iou"][2:]) + f" | {fmt(last['delta1'])} |")
    samples = [r["step"] * batch for r in rows]
    color = next(colors)
    ax1.plot(samples, [_figures(r)["miou"] for r in rows], marker="o", ms=3, label=name,
             color=color)
    ax2.plot(samples, [_figures(r)["delta1"] for r in rows], marker="o", ms=3, label=name,
             color=color)
  for item in args.oracle:
    name, out = item.split("=", 1)
    with open(os.path.join(out, "oracle.json")) as f:
      d = json.load(f)
    h = d["history"]
    last = h[-1]
    lines.append(f"| {name} (encoder-only oracle) | {last['step']} | 64 | {last['seconds']:.0f} | "
                 f"{fmt(last['accuracy'])} | {fmt(last['miou'])} | "
                 + " | ".join(fmt(v) for v in last["iou_per_class"][2:]) + " |  |")
    ax1.plot([r["step"] * 64 for r in h], [r["miou"] for r in h], ls="--", marker="s", ms=3,
             label=f"{name} (oracle)", color=next(colors))
  ax1.set(xlabel="training samples seen", ylabel="decoded mIoU (held-out)",
          title="RGB -> semseg, argmax in one step")
  ax2.set(xlabel="training samples seen", ylabel="delta1 (held-out)", title="RGB -> depth")
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  os.makedirs(args.out, exist_ok=True)
  fig.savefig(os.path.join(args.out, "curves.png"), dpi=100)
  with open(os.path.join(args.out, "ablations.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
