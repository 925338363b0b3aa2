"""Statistics of a scenes dataset split, printed and plotted.

    PYTHONPATH=. python experiments/scenes_dataset/stats.py \
        --data workdirs/scenes/data --split train --out experiments/scenes_dataset/stats.png
"""

import argparse
import json

import matplotlib
import numpy as np
from tqdm import tqdm

from m4.data import scenes

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def collect(source) -> dict:
  n = len(source)
  spec = source.spec
  count = np.zeros(n, np.int64)
  words = np.zeros(n, np.int64)
  pixels = np.zeros(len(scenes.CLASSES), np.int64)
  shape, color, size, area, largest = [], [], [], [], []
  relations = {r: 0 for r in scenes.RELATIONS}
  for i in tqdm(range(n), desc=f"stats {source.split}", unit="sample"):
    s = source[i]
    k = int(s["labels"]["count"])
    count[i] = k
    words[i] = len(s["caption"].split())
    pixels += np.bincount(s["semseg"].ravel(), minlength=len(scenes.CLASSES))
    shape.append(s["scene"]["shape"][:k])
    color.append(s["scene"]["color"][:k])
    size.append(s["scene"]["size"][:k])
    area.append(s["scene"]["area_px"][:k])
    largest.append(int(s["labels"]["largest_shape"]))
    for r in scenes.RELATIONS:
      relations[r] += s["caption"].count(f" {r} ")
  cat = np.concatenate
  return dict(spec=spec, count=count, words=words, pixels=pixels, shape=cat(shape),
              color=cat(color), size=cat(size), area=cat(area) / spec.resolution ** 2,
              largest=np.array(largest), relations=relations)


def plot(st: dict, path: str, split: str):
  fig, ax = plt.subplots(2, 4, figsize=(16, 7))
  ax = ax.ravel()

  def bars(a, labels, values, title):
    a.bar(range(len(labels)), values)
    a.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    a.set_title(title)

  spec = st["spec"]
  ks = range(spec.min_objects, spec.max_objects + 1)
  bars(ax[0], [str(k) for k in ks], [np.mean(st["count"] == k) for k in ks], "objects per scene")
  bars(ax[1], scenes.SHAPES, np.bincount(st["shape"], minlength=4) / len(st["shape"]),
       "shape (all objects)")
  bars(ax[2], scenes.COLORS, np.bincount(st["color"], minlength=8) / len(st["color"]), "colour")
  bars(ax[3], scenes.SIZES, np.bincount(st["size"], minlength=3) / len(st["size"]), "size")
  bars(ax[4], scenes.SHAPES, np.bincount(st["largest"], minlength=4) / len(st["largest"]),
       "label: shape of the largest object")
  bars(ax[5], scenes.CLASSES, st["pixels"] / st["pixels"].sum(), "semseg pixel share")
  ax[6].hist(100 * st["area"], bins=50)
  ax[6].set_title("visible area per object (% of image)")
  ax[7].hist(st["words"], bins=np.arange(st["words"].max() + 2) - 0.5)
  ax[7].set_title("caption length (words)")
  fig.suptitle(f"scenes {split}: {len(st['count'])} samples, {spec.resolution} px")
  fig.tight_layout()
  fig.savefig(path, dpi=80)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data", required=True)
  p.add_argument("--split", default="train")
  p.add_argument("--out", required=True)
  args = p.parse_args()
  st = collect(scenes.ScenesSource(args.data, args.split))
  plot(st, args.out, args.split)
  summary = {
      "samples": len(st["count"]),
      "objects_per_scene_mean": float(st["count"].mean()),
      "caption_words_max": int(st["words"].max()),
      "caption_words_mean": float(st["words"].mean()),
      "visible_area_pct_min": float(100 * st["area"].min()),
      "visible_area_pct_median": float(100 * np.median(st["area"])),
      "semseg_pixel_share": {c: round(float(v), 4) for c, v in
                             zip(scenes.CLASSES, st["pixels"] / st["pixels"].sum())},
      "relations": st["relations"],
  }
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
