"""Bar chart of a training step's time: the reference 4M vs m4 (bench_train).

    python experiments/train_speed/plot.py --results experiments/train_speed/results.jsonl \
        --out experiments/train_speed/step_time.png

Reads the JSON lines written by `python -m m4.tools.bench_train ...
--config.bench.breakdown=True`; each row becomes one stacked bar (forward,
backward, optimizer), next to the reference's measured forward / backward.
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

# apple/ml-4m on the same 2-core CPU and shape (/work/shared/4M_REFERENCE.md).
REFERENCE = {"forward": 0.48, "backward": 1.4 - 0.48, "optimizer": 0.0}
COLORS = {"forward": "#4c72b0", "backward": "#dd8452", "optimizer": "#55a868"}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--results", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  with open(args.results) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  bars = [("reference\n(PyTorch, no optimizer)", REFERENCE)]
  for row in rows:
    parts = {"forward": row["forward_s_median"], "backward": row["backward_s"],
             "optimizer": row["optimizer_s"]}
    bars.append((f"m4\n(load {row['load_avg_1min']:.1f})", parts))
  fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(bars), 4))
  for i, (_, parts) in enumerate(bars):
    bottom = 0.0
    for name in ("forward", "backward", "optimizer"):
      ax.bar(i, parts[name], bottom=bottom, color=COLORS[name], label=name if i == 0 else None)
      bottom += parts[name]
    ax.text(i, bottom, f"{bottom:.2f} s", ha="center", va="bottom", fontsize=9)
  ax.axhline(0.7, color="k", ls="--", lw=1, label="target 0.7 s")
  ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
  ax.set_ylabel("seconds per training step (batch 32)")
  ax.set_title("4M 4+4 blocks, width 256, 64+64 tokens, 2-core CPU", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
  main()
