"""The instances texts' health on held-out scenes, and a picture.

    PYTHONPATH=. python experiments/steerable_generation/instances_health.py

For each validation scene (64 px, every object visible in the instance map):
the instances text (m4.data.scene_sequences: shape, box, 4x4 mask cells per
object) through the committed shared vocabulary (tokenizers/
wordpiece_scenes21.json), back to masks, and each mask's IoU with the
object's true pixels: the quantisation's ceiling for any model that writes
instances. Writes instances_health.json and instances_grid.png (rgb | the
instance map | the instances text drawn | the boxes text drawn) here.
"""

import argparse
import json
import os

import numpy as np

from m4 import modalities
from m4 import pictures
from m4.data import scene_sequences
from m4.data import scenes
from m4.tokenizers import text

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num", type=int, default=1000)
  p.add_argument("--split", default="validation")
  args = p.parse_args()
  tok = text.load(modalities.get("instances").tokenizer)
  ious, lengths, exact, rows, captions = [], [], 0, [], []
  for i in range(args.num):
    s = scene_sequences.add_texts(scenes.render(i, split=args.split, extras=scene_sequences.EXTRAS))
    ids = tok.encode(s["instances_text"])
    back = tok.decode(ids)
    exact += back == s["instances_text"]
    lengths.append(len(ids) + 1)  # With [EOS].
    size = s["instance"].shape
    for k, (_, region) in zip([k for k in np.unique(s["instance"]) if k >= 2],
                              scene_sequences.regions("instances", back, size)):
      mask = s["instance"] == k
      ious.append(float(np.sum(region & mask) / np.sum(region | mask)))
    if i < 8:
      rows.append({"rgb": s["rgb"], "instance": s["instance"],
                   "instances": scene_sequences.picture("instances", back, size),
                   "boxes": scene_sequences.picture("boxes", s["boxes_text"], size)})
      captions.append(f"{args.split} {i}: {s['instances_text']}")
  ious = np.asarray(ious)
  health = {"split": args.split, "scenes": args.num, "objects": int(ious.size),
            "round_trip_exact": exact / args.num, "mask_iou_mean": float(ious.mean()),
            "mask_iou_p10": float(np.percentile(ious, 10)),
            "mask_iou_at_least_0.5": float(np.mean(ious >= 0.5)),
            "tokens_mean": float(np.mean(lengths)), "tokens_max": int(np.max(lengths)),
            "num_tokens": modalities.get("instances").num_tokens,
            "mask_cells": scene_sequences.MASK_CELLS}
  with open(os.path.join(HERE, "instances_health.json"), "w") as f:
    json.dump(health, f, indent=1)
  pictures.save_grid(os.path.join(HERE, "instances_grid.png"), rows, captions,
                     kinds={"instance": "semseg", "instances": "semseg", "boxes": "semseg"})
  print(json.dumps(health, indent=1))


if __name__ == "__main__":
  main()
