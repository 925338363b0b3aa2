"""Count steering through a chain: metadata -> boxes text -> box map -> semseg -> RGB.

    PYTHONPATH=. python experiments/steerable_generation/count_chain.py \
        --run=workdirs/steering_quick_boxmap2semseg [--samples=256]

4M generates in chains (caption -> boxes -> semseg -> RGB). A model that
reads boxes as a map (`box_map`, steering_quick.py's box_map variants) can
then be steered by any text it writes boxes from. Given each test scene's
metadata text (count, camera pitch and height, brightness, object share),
the model writes a boxes text (autoregressive, sampled at temperature 1),
`scene_sequences.box_map` draws it, and semseg is drawn from the map and
the metadata (decoded as the run's gen_boxes stage: MaskGIT 8 steps,
temperature 0.5, guidance 2, here on both; --num_steps and --temperature
change semseg's), then RGB from all three. With --layout_tries=N the model
writes N boxes texts per scene and the chain keeps the one that holds the
asked count with the least overlap between its boxes (a check of the
condition alone, never of the scene's truth). Beside it, the same model
draws semseg from the metadata alone (no boxes between). Both semseg maps
and the written boxes are scored against the metadata's count
(m4.generation.quality.count_sums, count_match_sums). Writes
RUN/OUT/metrics.json and grid.png (OUT: --out, default count_chain).
"""

import argparse
import json
import os

import ml_collections
import numpy as np

from m4 import generation
from m4 import pictures
from m4 import workdir as workdir_lib
from m4.data import pipeline
from m4.data import scene_sequences
from m4.generation import quality
from m4.jobs import generate as generate_job
from m4.models import pretrained


def _steps(decoding, conditions):
  """semseg then RGB, decoded as `decoding` (the gen_boxes stage's, with the
  flags' semseg changes), guided on `conditions`."""
  decoding = {t: dict(d, cfg_conditions=tuple(conditions)) for t, d in decoding.items()}
  return generation.steps_from_config(("semseg", "rgb"), decoding)


def _overlap(boxes):
  """The largest share of a box's area that another box covers (boxes: bool
  (H, W) regions; 1 when there are none)."""
  if not boxes:
    return 1.0
  worst = 0.0
  for i, a in enumerate(boxes):
    for b in boxes[i + 1:]:
      worst = max(worst, (a & b).sum() / max(1, min(a.sum(), b.sum())))
  return worst


def _layout(candidates, count, min_area, image_size):
  """The candidate boxes text with `count` boxes, none under `min_area`
  pixels, and the least overlap (boxes drawn at `image_size`, as the map)."""
  def key(text):
    boxes = [r for _, r in scene_sequences.regions("boxes", text, image_size)]
    smallest = min((int(r.sum()) for r in boxes), default=0)
    return len(boxes) != count, smallest < min_area, _overlap(boxes)
  return min(candidates, key=key)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--run", required=True, help="a chain workdir with pretrain/ and gen_boxes/")
  p.add_argument("--samples", type=int, default=256)
  p.add_argument("--grid_rows", type=int, default=8)
  p.add_argument("--num_steps", type=int, default=None,
                 help="semseg's MaskGIT steps (default: the gen_boxes stage's, 8)")
  p.add_argument("--temperature", type=float, default=None,
                 help="semseg's (0: greedy; default: the gen_boxes stage's, 0.5)")
  p.add_argument("--out", default="count_chain", help="folder in the run")
  p.add_argument("--boxes_temperature", type=float, default=1.0,
                 help="sampling the boxes text (greedy, 0, writes a class and stops: the"
                      " coordinates' probability is spread over 64 bins)")
  p.add_argument("--layout_tries", type=int, default=1,
                 help="boxes texts written per scene; the chain keeps the one with the asked"
                      " count and the least overlap")
  p.add_argument("--layout_min_area", type=int, default=0,
                 help="with --layout_tries: prefer texts whose boxes all cover this many pixels")
  args = p.parse_args()
  init = os.path.join(args.run, "pretrain")
  stage = workdir_lib.read_json(os.path.join(args.run, "gen_boxes", "config.json"))
  model = pretrained.load(init)
  names = ("metadata", "boxes", "box_map", "semseg", "rgb")
  vq, text = generate_job.load_tokenizers(init, names, stage["tokenizers"])
  decoding = {t: dict(stage["decoding"][t]) for t in ("semseg", "rgb")}
  for field in ("num_steps", "temperature"):
    if getattr(args, field) is not None:
      decoding["semseg"][field] = getattr(args, field)
  data = ml_collections.ConfigDict(stage["data"])
  data.modalities = ()  # Every raw key: the metadata texts and the pictures' truth.
  gen = generation.Generator(model)
  write_boxes = generation.steps_from_config(("boxes",), {"boxes": dict(
      scheme="autoregressive", temperature=args.boxes_temperature,
      temperature_schedule="constant")})
  it = pipeline.make_iterator(data, "test", seed=0, training=False)
  sums = quality.Sums()
  rows, captions, seen = [], [], 0
  for index in range(pipeline.num_eval_batches(data, args.samples)):
    batch = next(it)
    valid = np.asarray(batch["valid"]) & (seen + np.arange(len(batch["valid"])) < args.samples)
    seen += len(valid)
    metadata = [str(t) for t in batch["metadata_text"]]
    given = {"metadata": generation.text_entry("metadata", metadata, text["metadata"])}
    tries = [text["boxes"].decode_batch(gen.generate(
        dict(given), write_boxes, seed=index + 100_003 * t).state["boxes"]["tensor"])
             for t in range(args.layout_tries)]
    size = tuple(vq["box_map"].image_size)
    boxes = [_layout([c[b] for c in tries], scene_sequences.from_text("metadata", m)["count"],
                     args.layout_min_area, size) for b, m in enumerate(metadata)]
    maps = np.stack([scene_sequences.box_map(t, size) for t in boxes])
    chained = dict(given, box_map=generation.image_entry("box_map", vq["box_map"].encode(maps)))
    drawn = {}
    for label, state, conditions in (("metadata->boxes->box_map->semseg", chained,
                                      ("metadata", "box_map")),
                                     ("metadata->semseg", given, ("metadata",))):
      result = gen.generate(dict(state), _steps(decoding, conditions), seed=index, chained=True)
      semseg, rgb = (np.asarray(vq[n].decode(np.asarray(result.state[n]["tensor"]).reshape(
          (-1,) + tuple(vq[n].grid)))) for n in ("semseg", "rgb"))
      sums.add(label, quality.count_sums(semseg, metadata, valid))
      drawn[label] = (semseg, rgb)
    sums.add("metadata->boxes", quality.count_match_sums(
        [len(scene_sequences.regions("boxes", t)) for t in boxes], metadata, valid))
    for b in np.flatnonzero(valid):
      if len(rows) < args.grid_rows:
        chain, alone = drawn["metadata->boxes->box_map->semseg"], drawn["metadata->semseg"]
        rows.append({"box map (written)": maps[b], "semseg (chain)": chain[0][b],
                     "rgb (chain)": chain[1][b], "semseg (metadata alone)": alone[0][b],
                     "rgb (truth)": np.asarray(batch["rgb"][b])})
        captions.append(f"given: {metadata[b]} | written: {boxes[b]}")
  figures = sums.figures({k: quality.count_figures for k in sums.sums})
  out = os.path.join(args.run, args.out)
  workdir_lib.write_json(os.path.join(out, "metrics.json"),
                         {"samples": int(sums.sums["metadata->boxes"]["samples"]), "count": figures})
  kinds = {"box map (written)": "semseg", "semseg (chain)": "semseg", "rgb (chain)": "rgb",
           "semseg (metadata alone)": "semseg", "rgb (truth)": "rgb"}
  pictures.save_grid(os.path.join(out, "grid.png"), rows, captions, kinds=kinds)
  print(json.dumps(figures, indent=1))


if __name__ == "__main__":
  main()
