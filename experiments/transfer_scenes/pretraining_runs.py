"""Issue 11's transfer margins over several pretraining runs of one recipe.

    python experiments/transfer_scenes/pretraining_runs.py \
        f2=workdirs/transfer/f2_closing/eval f2_seed1=workdirs/transfer/f2s1_closing_ft/eval ...

Each argument is `label=DIR`, DIR a transfer job's eval folder (its
results.json, test split). Several folders may share a label (a model's probe
and fine-tune halves run apart) but not a run. For every task, protocol and metric of the
bars (count top-1, semseg mIoU: points; depth abs-rel: percent change;
depth delta1: points), prints each model's scratch and pretrained means over
the fine-tuning seeds and their margin, then the margins' mean and standard
deviation over the pretraining runs, as a markdown table.
"""

import collections
import json
import os
import statistics
import sys

# (task, metric, how the margin is read: "points" = 100 x (pretrained - scratch),
# "percent" = 100 x (pretrained / scratch - 1)).
BARS = (("count", "top1", "points", 10.0), ("semseg", "miou", "points", 10.0),
        ("depth", "abs_rel", "percent", -30.0), ("depth", "delta1", "points", 5.0))


def _load(pairs):
  """{label: {(task, protocol, init): {seed: metric dict}}} from label=DIR args."""
  out = collections.defaultdict(lambda: collections.defaultdict(dict))
  for pair in pairs:
    label, _, folder = pair.partition("=")
    if not folder:
      sys.exit(f"{pair!r}: expected label=DIR")
    path = os.path.join(folder, "results.json")
    try:
      with open(path) as f:
        rows = json.load(f)
    except (OSError, ValueError) as e:
      sys.exit(f"{path}: {e}")
    for r in rows:
      if r.get("eval_split") != "test":
        continue
      per_seed = out[label][(r["task"], r["protocol"], r["init"])]
      if r["seed"] in per_seed:
        sys.exit(f"{path}: {label!r} already has {r['run']} from another folder")
      per_seed[r["seed"]] = r["metrics"]
  return out


def _margin(scratch: float, pretrained: float, how: str) -> float:
  return 100 * (pretrained - scratch) if how == "points" else 100 * (pretrained / scratch - 1)


def main(pairs):
  runs = _load(pairs)
  print("| task | metric | protocol | " + " | ".join(runs) + " | mean ± std | bar |")
  print("| --- | --- | --- | " + " | ".join("---:" for _ in runs) + " | ---: | --- |")
  for task, metric, how, bar in BARS:
    for protocol in ("probe", "finetune"):
      cells, margins = [], []
      for label, results in runs.items():
        arms = {init: [m[metric] for m in results.get((task, protocol, init), {}).values()]
                for init in ("scratch", "pretrained")}
        if not all(arms.values()):
          cells.append("—")
          continue
        s, p = statistics.mean(arms["scratch"]), statistics.mean(arms["pretrained"])
        margins.append(_margin(s, p, how))
        cells.append(f"{s:.4g} → {p:.4g} ({margins[-1]:+.1f})")
      if not margins:
        continue
      spread = statistics.stdev(margins) if len(margins) > 1 else 0.0
      unit = " %" if how == "percent" else ""
      print(f"| {task} | {metric} | {protocol} | " + " | ".join(cells)
            + f" | {statistics.mean(margins):+.1f} ± {spread:.1f}{unit} | {bar:+g}{unit} |")


if __name__ == "__main__":
  main(sys.argv[1:])
