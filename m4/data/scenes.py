"""The scenes dataset: small procedural 3D scenes, every modality exactly aligned.

Between min_objects and max_objects (at most 5) objects, each a shape of
SHAPES, a colour of COLORS and a size of SIZES, stand on a ground plane under
a sky, seen from a random camera (45 degree field of view, no roll) and lit by
a sun that casts shadows. Objects never intersect; every object is visible
(its centre pixel and at least 0.8 % of the image). Vectorised numpy ray
casting with analytic intersections gives, per sample (the raw-sample
contract of m4.data):

  rgb      uint8 (H, W, 3): diffuse + hemispheric ambient shading, cast
           shadows, a sky gradient; anti-aliased by supersampling.
  depth    float32 (H, W): z-depth in metres of the pixel-centre ray, at most
           GROUND_FAR (25 m; the ground ends there); sky = 0 (invalid).
  semseg   uint8 (H, W): CLASSES ids of the pixel-centre ray (0 sky, 1 ground,
           2 + shape id for objects).
  caption  str: every object, left to right as the camera sees it, e.g.
           "a large red sphere left of a small blue cube in front of a medium
           gray cone" (each relation links an object to the next one).
  labels   {"count": int32 number of objects,
            "largest_shape": int32 SHAPES id of the largest object}: the
           object whose size (in SIZES) is largest; sizes are drawn so that
           exactly one object has the largest size.
  scene    per-object arrays padded to max_objects with -1, objects sorted left
           to right (the caption's order): shape, color, size (ids into SHAPES,
           COLORS, SIZES), center_px (x = column, y = row, continuous pixel
           coordinates: pixel (r, c) covers [c, c+1) x [r, r+1)) of the
           projected bounding-box centre (always visible: scenes where it is
           occluded are redrawn), depth_m (its z-depth), area_px (visible
           pixels), bbox_px (x0, y0, x1, y1) of the visible pixels (exclusive
           ends), position (world base centre, metres), radius, rotation;
           and the camera (camera_position, camera_rotation rows = right, up,
           forward; focal_px) and light_direction.
  id       int64, the index within its split.

Opt-in (SceneSpec.extras, config field `extras`, e.g. ("normals", "edges")):
more 4M-21-style ground truth per sample, from the same pixel-centre rays:
normals (camera space), instance, edges (geometry), rgb_edges (Canny-style),
boxes, palette and metadata; m4.data.scene_extras documents each. With no
extras (the default) samples and spec.json are exactly as before.

A sample is a pure function of (seed, split, index, generation parameters):
the splits draw from disjoint seed streams, so they never overlap.

On disk (`ensure`, or `python -m m4.data.scenes`), a dataset is a directory:

  DIR/spec.json                the generation parameters (SceneSpec) + tables
  DIR/{train,validation,test}.array_record
                               one msgpack record per sample, in index order

Each split is written to a temporary file and renamed when complete, so an
interrupted run leaves no half split behind; rerunning resumes with the
missing splits. Files other than these in DIR are never touched.

    python -m m4.data.scenes --out /tmp/scenes --num 4000 [--workers 2]
        [--num_validation 400 --num_test 400 --resolution 64 --max_objects 4
         --seed 0 --split train --extras normals,instance,edges]
                                   # validation/test default to num // 10
    python -m m4.data.scenes --benchmark 500   # renders only, prints samples/s

The parts: scene_spec (vocabulary, SceneSpec), scene_graph (sampling),
scene_raycast (intersections, shading), scene_captions, scene_extras
(optional ground truth), scene_render (one sample), scene_store (files,
ScenesSource), scene_writer (write_split, ensure). This module re-exports what callers use and is the command line.
"""

import argparse
import os
import sys

import numpy as np

# The public names of the scenes dataset, re-exported for callers.
# pylint: disable=g-importing-member,unused-import
from m4 import pictures
from m4 import workdir
from m4.data import scene_extras
from m4.data.scene_captions import LEFT_OF_FRACTION, RELATIONS, caption_words, parse_caption
from m4.data.scene_raycast import GROUND_FAR
from m4.data.scene_render import benchmark, render
from m4.data.scene_spec import (CLASSES, COLORS, EXTRAS, FIRST_OBJECT_CLASS, GROUND,
                                MAX_OBJECTS_LIMIT, RENDERER_VERSION, SHAPES, SIZES, SKY, SPLITS,
                                SceneSpec, default_config)
from m4.data.scene_store import SPEC_FILE, ScenesSource, decode, encode, read_spec, split_path
from m4.data.scene_writer import ensure, write_split
# pylint: enable=g-importing-member,unused-import


def grid(path: str, data_dir: str, split: str = "validation", num: int = 8,
         start: int = 0) -> str:
  """Draws samples `start`.. of a stored split as a PNG grid of rgb / depth /
  semseg with their captions (m4.pictures); returns `path`."""
  source = ScenesSource(data_dir, split)
  samples = [source[i] for i in range(start, min(start + num, len(source)))]
  rows = [{"rgb": s["rgb"], "depth": s["depth"], "semseg": s["semseg"]} for s in samples]
  captions = [f"{split} {int(s['id'])}: {s['caption']}" for s in samples]
  return pictures.save_grid(path, rows, captions, titles={"depth": "depth (m)"})


def palette_image(palette, size: int) -> np.ndarray:
  """A palette as a (size, size, 3) uint8 image: one vertical band a colour,
  its width its pixel share."""
  edges = np.round(np.cumsum(palette["fraction"]) * size).astype(int)
  band = np.searchsorted(edges, np.arange(size), side="right")
  return palette["colors"][np.minimum(band, len(edges) - 1)][None].repeat(size, 0)


def extras_grid(path: str, num: int = 8, split: str = "validation", **render_args) -> str:
  """Renders samples 0.. of `split` with every extra and draws rgb | normals |
  instance | edges | rgb_edges | palette (m4.pictures); returns `path`."""
  samples = [render(i, split=split, **{**render_args, "extras": EXTRAS}) for i in range(num)]
  rows = [{"rgb": s["rgb"], "normals": s["normals"], "instance": s["instance"],
           "edges": s["edges"], "rgb_edges": s["rgb_edges"],
           "palette": palette_image(s["palette"], s["rgb"].shape[0])}
          for s in samples]
  captions = [f"{split} {int(s['id'])}: {s['caption']}" for s in samples]
  return pictures.save_grid(path, rows, captions,
                            kinds={"normals": "normals", "instance": "semseg", "edges": "edges",
                                   "rgb_edges": "edges", "palette": "rgb"})


def main(argv=None):
  p = argparse.ArgumentParser(
      prog="python -m m4.data.scenes",
      description="Renders the scenes dataset into DIR (train/validation/test ArrayRecord"
      " files + spec.json); an existing dataset with the same parameters is reused.")
  p.add_argument("--out", help="dataset directory")
  p.add_argument("--benchmark", type=int, default=0, metavar="N",
                 help="only time rendering N samples in this process (writes nothing)")
  p.add_argument("--num", type=int, default=SceneSpec.num_train, help="training samples")
  p.add_argument("--num_validation", type=int, default=None,
                 help="validation samples (default: max(1, num // 10))")
  p.add_argument("--num_test", type=int, default=None,
                 help="test samples (default: max(1, num // 10))")
  p.add_argument("--resolution", type=int, default=SceneSpec.resolution)
  p.add_argument("--min_objects", type=int, default=SceneSpec.min_objects)
  p.add_argument("--max_objects", type=int, default=SceneSpec.max_objects)
  p.add_argument("--seed", type=int, default=SceneSpec.seed)
  p.add_argument("--antialias", type=int, default=SceneSpec.antialias)
  p.add_argument("--extras", default="",
                 help=f"comma-separated extra ground truth, of {','.join(EXTRAS)}")
  p.add_argument("--workers", type=int, default=1, help="rendering processes")
  p.add_argument("--split", action="append", choices=SPLITS,
                 help="write only this split now (repeatable; default: all)")
  args = p.parse_args(argv)
  extras = tuple(e for e in args.extras.split(",") if e)
  if args.benchmark:
    spec = SceneSpec(resolution=args.resolution, min_objects=args.min_objects,
                     max_objects=args.max_objects, seed=args.seed, antialias=args.antialias,
                     extras=extras)
    rate = benchmark(spec, args.benchmark)
    seconds = args.benchmark / rate
    print(f"rendered {args.benchmark} samples in {seconds:.2f} s: {rate:.1f} samples/s,"
          f" {1000 * seconds / args.benchmark:.2f} ms/sample ({spec.render_args()})")
    return 0
  if not args.out:
    p.error("--out is required (or --benchmark N)")
  held_out = max(1, args.num // 10)
  config = dict(
      num_train=args.num,
      num_validation=held_out if args.num_validation is None else args.num_validation,
      num_test=held_out if args.num_test is None else args.num_test,
      resolution=args.resolution, min_objects=args.min_objects,
      max_objects=args.max_objects, seed=args.seed, antialias=args.antialias,
      extras=extras, workers=args.workers)
  stats = {}
  try:
    ensure(args.out, config, splits=tuple(args.split or SPLITS), stats=stats)
  except (workdir.ConfigError, ValueError) as e:
    print(f"m4.data.scenes: error: {e}", file=sys.stderr)
    return 2
  for split in SPLITS:
    if split in stats:
      s = stats[split]
      print(f"{split}: wrote {s['samples']} samples in {s['seconds']:.1f} s"
            f" ({s['samples_per_sec']:.1f} samples/s)")
    elif os.path.exists(split_path(args.out, split)):
      print(f"{split}: {config['num_' + split]} samples, already there")
    else:
      print(f"{split}: not written (--split)")
  print(f"dataset: {os.path.abspath(args.out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
