"""Training curves of the three VQ tokenizers, from their metrics.jsonl.

    python experiments/tokenizers/plot_curves.py --root workdirs/tokenizers \
        --out experiments/tokenizers/training_curves.png

Top row: each tokenizer's reconstruction figure on its training batches (RGB
PSNR, depth delta1 of log-depth over valid pixels, semseg pixel accuracy) with
the held-out figure at the end as a star. Bottom row: codebook usage and
perplexity per training batch (fraction of the codes a batch of 32 x 64 tokens
uses, so below the held-out usage over the whole split).
"""

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from m4 import workdir as workdir_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

PANELS = (  # (workdir name, training key, held-out key, title)
    ("vq_rgb", "psnr", "eval/psnr", "RGB: PSNR (dB)"),
    ("vq_depth", "delta1_log", "eval/delta1", "depth: delta1"),
    ("vq_semseg", "pixel_accuracy", "eval/miou", "semseg: pixel accuracy (star: mIoU)"),
)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="workdirs/tokenizers")
  parser.add_argument("--out", default="experiments/tokenizers/training_curves.png")
  args = parser.parse_args(argv)
  fig, axes = plt.subplots(2, 3, figsize=(13, 7))
  for j, (name, key, eval_key, title) in enumerate(PANELS):
    rows = workdir_lib.read_metrics(os.path.join(args.root, name))
    train = [r for r in rows if key in r]
    if not train:
      axes[0, j].set_title(f"{title}\n(no metrics in {name})")
      continue
    steps = [r["step"] for r in train]
    axes[0, j].plot(steps, [r[key] for r in train], label="training batches")
    held = [r for r in rows if eval_key in r]
    if held:
      axes[0, j].plot([held[-1]["step"]], [held[-1][eval_key]], "*", markersize=12,
                      label=f"validation: {held[-1][eval_key]:.3f}")
    axes[0, j].set_title(title)
    axes[0, j].legend(loc="lower right")
    axes[0, j].grid(alpha=0.3)
    usage = axes[1, j]
    usage.plot(steps, [r["batch_codebook_usage"] for r in train], color="tab:green",
               label="batch codebook usage")
    if held:
      usage.plot([held[-1]["step"]], [held[-1]["eval/codebook_usage"]], "*", color="tab:green",
                 markersize=12, label=f"validation usage: {held[-1]['eval/codebook_usage']:.2f}")
    usage.set_ylim(0, 1)
    usage.set_xlabel("step")
    usage.grid(alpha=0.3)
    perplexity = usage.twinx()
    perplexity.plot(steps, [r["batch_perplexity"] for r in train], color="tab:purple",
                    label="batch perplexity")
    perplexity.set_ylabel("perplexity", color="tab:purple")
    lines = usage.get_legend_handles_labels()
    more = perplexity.get_legend_handles_labels()
    usage.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  fig.savefig(args.out, dpi=90)
  print(args.out)


if __name__ == "__main__":
  main()
