"""The `pretokenize` job: token shards of a dataset, all modalities at once (as 4M does).

    python -m m4.main --config=configs/pretokenize/scenes.py --workdir=DIR
    python -m m4.tools.pretokenize --config=configs/pretokenize/scenes.py --workdir=DIR

Writes `m4.data.token_shards` shards to DIR (spec.json, DIR/<split>/shard-*)
for every split of `config.splits`: per sample the VQ tokens of each image
modality, the caption's WordPiece ids, the caption text and the raw
sample's labels / scene. Pretraining then reads tokens, not pixels.

Views (recorded in spec.json): view 0 of every sample is the central full
view (`AlignedCrop(random=False)`, what evaluation uses); samples of the
splits in `config.view_splits` get `config.random_views` more views, random
aligned crops + flips drawn with `config.data`'s crop_scale, crop_ratio and
flip from a generator seeded by (config.seed, split, index, view). Every
modality of a view shares its crop, so tokens stay aligned; pretraining picks
one view per sample and epoch.

Resumable: finished shards are kept and skipped; a killed run leaves only a
hidden temp file (removed on the next run) and continues with the missing
shards. The spec (tokenizers with fingerprints, views, source) is compared
on every run: a directory made with other settings is refused, never
changed. With several processes (jax.distributed), process p writes shards
p, p + P, ...

Bad samples: every sample read is checked by the tokenizers' input checks
(e.g. semseg class ids below the tokenizer's num_classes) before it is
tokenized; a bad one is a DataError naming its file (folder datasets) or
its split and index. With `data.on_error = "skip"` such samples, and those
the source cannot read, are left out: the shard holds the others, a
`<shard>.skipped.json` beside it lists the skipped indices and why, and the
summary counts them. A split without samples is refused.

config fields:
  data: the source (`m4.data.pipeline.data_config`); image_size and the
    crop settings define the views.
  modalities: registry entries to add for this run (name -> Modality
    fields; empty for the embedded defaults).
  tokenize: registry names to tokenize (image: a VQ tokenizer each;
    sequence: its text tokenizer; pixels: the view's image, kept as uint8).
  tokenizers: {modality: name or directory} of VQ tokenizers
    (`m4.tokenizers.load`; a converted 4M tokenizer, m4.tools.convert_4m_tokenizer,
    takes its inputs in 4M's units); sequences may name a text tokenizer file
    (absent: the registry entry's `tokenizer`).
  splits, view_splits, random_views, seed: as above.
  samples_per_shard: shard size (the last shard of a split may be smaller).
  max_samples: tokenize only the first N samples of each split (0: all).
  batch_size: images per jitted tokenizer call.
  grid_samples: training samples drawn in DIR/views_grid.png, every view
    decoded from its tokens (0: no grid).
"""

from __future__ import annotations

import math
import os
import sys
import time
import zlib
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from m4 import modalities as modalities_lib
from m4 import pictures
from m4 import tokenizers
from m4 import workdir as workdir_lib
from m4.data import record_files
from m4.data import sources
from m4.data import token_shards
from m4.data import transforms as transforms_lib
from m4.tokenizers import released_tokenizer
from m4.tokenizers import text as text_lib
from m4.workdir import ConfigError, DataError, require


FIELDS = ("seed", "data", "modalities", "tokenize", "tokenizers", "splits", "view_splits",
          "random_views", "samples_per_shard", "max_samples", "batch_size", "grid_samples")


class Tokenizers:
  """The tokenizers of the modalities to pre-tokenize, loaded and checked."""

  def __init__(self, config):
    self.names = tuple(config.tokenize)
    require(len(self.names) > 0, "tokenize", "is empty.")
    self.image, self.text, self.pixels, self.entries = {}, {}, {}, {}
    size = tuple(int(s) for s in config.data.image_size)
    named = dict(config.tokenizers or {})
    for name in self.names:
      try:
        mod = modalities_lib.get(name)
      except KeyError as e:
        raise ConfigError(f"config.tokenize: {e.args[0]}") from None
      field = f"tokenizers.{name}"
      require(mod.kind == modalities_lib.PIXELS or bool(named.get(name) or mod.tokenizer), field,
              f"names no tokenizer for {name!r} (the registry names none).")
      if mod.kind == modalities_lib.PIXELS:
        require(tuple(size[i] // mod.grid[i] * mod.grid[i] for i in (0, 1)) == size,
                "tokenize", f"{name!r} has a {mod.grid} patch grid; config.data.image_size"
                f" {size} is not a whole number of patches.")
        self.pixels[name] = mod.data_key
        continue
      try:
        self.entries[name] = token_shards.tokenizer_entry(name, named.get(name))
      except FileNotFoundError as e:
        raise ConfigError(f"config.{field}: {e}") from None
      path = self.entries[name]["path"]
      if mod.is_image:
        tok = tokenizers.load_for_modality(name, path, field=field)
        released = isinstance(tok, released_tokenizer.ReleasedTokenizer)  # Named by its folder.
        # A modality may share another's tokenizer when the registry names the
        # same one for both (box_map: semseg's).
        shared = tok.name in modalities_lib.names() and (
            mod.tokenizer is not None and modalities_lib.get(tok.name).tokenizer == mod.tokenizer)
        require((released or tok.name == name or shared) and tok.grid == mod.grid
                and tok.vocab_size == mod.vocab_size,
                field, f"{path} tokenizes {tok.name!r} ({tok.grid}, {tok.vocab_size} codes),"
                f" not the registry's {name!r} ({mod.grid}, {mod.vocab_size}), nor a modality"
                f" whose registry entry names {name!r}'s tokenizer {mod.tokenizer!r}.")
        require(tuple(tok.image_size) == size, field,
                f"{path} takes {tuple(tok.image_size)} px images; config.data.image_size is"
                f" {size}.")
        self.image[name] = tok
      elif mod.is_sequence:
        tok = text_lib.load(path)
        require(tok.vocab_size <= mod.vocab_size, field,
                f"{path} has {tok.vocab_size} ids, more than {name!r}'s vocab_size"
                f" {mod.vocab_size}.")
        self.text[name] = tok
      else:
        raise ConfigError(f"config.tokenize: {name!r} is of kind {mod.kind}; only image and"
                          " sequence modalities have tokens.")


def make_spec(config, toks: Tokenizers, sizes: Mapping[str, int]) -> dict:
  """What the shards hold; compared with the stored spec on resume."""
  views = int(config.random_views)
  data = config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data)
  splits = {}
  for split, n in sizes.items():
    per = int(config.samples_per_shard)
    splits[split] = {"num_samples": n, "num_shards": max(1, math.ceil(n / per)),
                     "num_views": 1 + (views if split in tuple(config.view_splits) else 0)}
  return {
      "modalities": {n: modalities_lib.get(n).to_dict() for n in toks.names},
      "tokenizers": toks.entries,
      "views": {"view_0": "central (AlignedCrop random=False)",
                "random_views": views, "view_splits": list(config.view_splits),
                "image_size": list(config.data.image_size),
                "crop_scale": list(config.data.crop_scale),
                "crop_ratio": list(config.data.crop_ratio), "flip": bool(config.data.flip),
                "seed": int(config.seed)},
      "source": {k: data[k] for k in ("kind", "dir", "name") if k in data},
      "splits": splits,
  }


class _Views:
  """The aligned views of one raw sample: (crop boxes (V, 5), cropped samples)."""

  def __init__(self, config, split: str, num_views: int):
    d = config.data
    self.central = transforms_lib.AlignedCrop(d.image_size, random=False)
    self.random = transforms_lib.AlignedCrop(d.image_size, crop_scale=d.crop_scale,
                                             crop_ratio=d.crop_ratio, flip=d.flip)
    self.num_views = num_views
    self.seed = int(config.seed)
    self.split_id = zlib.crc32(split.encode())

  def __call__(self, sample: Mapping[str, Any], index: int):
    h, w = np.shape(sample.get("rgb", sample.get("depth", sample.get("semseg"))))[:2]
    boxes = [self.central.crop_box(h, w, None)]
    outs = [self.central.crop(sample, boxes[0])]
    for v in range(1, self.num_views):
      seed = [self.seed, self.split_id, int(index), v]
      boxes.append(self.random.crop_box(h, w, np.random.default_rng(seed)))
      outs.append(self.random.crop(sample, boxes[-1]))
    return np.asarray(boxes, np.float32), outs


class _Reader:
  """Reads and checks the samples of one split; with on_error "skip", a bad
  sample is None and `skipped` maps its index to the reason."""

  def __init__(self, toks: Tokenizers, source, split: str, on_error: str):
    require(on_error in sources.ON_ERROR, "data.on_error",
            f"{on_error!r} is not one of {sources.ON_ERROR}.")
    self.source, self.split, self.skip = source, split, on_error == "skip"
    self.checks = {modalities_lib.get(n).data_key: tok.check for n, tok in toks.image.items()}
    self.skipped: dict[int, str] = {}

  def __call__(self, index: int):
    sample = self.source[index]
    if sample is None:  # The source skipped it (it counts and names it).
      self.skipped[index] = sources.skip_reason(self.source, index)
      return None
    for key, check in self.checks.items():
      if key not in sample:
        continue
      try:
        check(np.asarray(sample[key])[None])
      except ValueError as e:
        where = sources.describe(self.source, index, key)
        if not self.skip:
          raise DataError(f"{where}: {e}") from None
        self.skipped[index] = f"{where}: {e}"
        logging.warning("pretokenize: skipping %s: %s", where, e)
        return None
    return sample


def _tokenize_chunk(toks: Tokenizers, raws, indices, views: _Views, batch_images: int):
  """Records (bytes) of the samples `raws` (their split indices `indices`)."""
  crops, viewed = zip(*(views(raw, i) for raw, i in zip(raws, indices)))
  flat = [v for vs in viewed for v in vs]
  tokens = {}
  for name, tok in toks.image.items():
    key = modalities_lib.get(name).data_key
    images = np.stack([v[key] for v in flat])
    pad = batch_images - len(images)  # Static shapes: one compiled encoder.
    if pad > 0:
      images = np.concatenate([images, np.repeat(images[:1], pad, 0)])
    ids = np.asarray(tok.encode(images))[:len(flat)]
    tokens[name] = ids.astype(token_shards.token_dtype(tok.vocab_size))
  for name, tok in toks.text.items():
    mod = modalities_lib.get(name)
    tokens[name] = np.stack([tok.encode_padded(str(v[mod.data_key]), mod.num_tokens)
                             for v in flat]).astype(np.int32)
  for name, key in toks.pixels.items():  # AlignedCrop's float [0, 1] -> uint8.
    images = np.stack([np.asarray(v[key], np.float32) for v in flat])
    tokens[name] = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
  records, start = [], 0
  for raw, index, crop, vs in zip(raws, indices, crops, viewed):
    n = len(vs)
    rec = {"id": np.int64(index), "crop": crop}
    for name in toks.names:
      rec[name] = tokens[name][start:start + n]
    for name in toks.text:
      rec[f"text/{name}"] = str(vs[0][modalities_lib.get(name).data_key])
    for key in ("labels", "scene"):
      if key in vs[0]:
        rec[key] = vs[0][key]
    records.append(token_shards.encode_record(rec))
    start += n
  return records


def pretokenize(config, out_dir: str, *, progress: bool = True,
                record_config: bool = False) -> dict:
  """Writes (or completes) the token shards of `config` in `out_dir`.

  Everything is checked before anything is written; `record_config` then
  writes `out_dir/config.json` first (`m4.workdir.write_config`).
  """
  workdir_lib.require_fields(config, FIELDS, "configs/pretokenize/scenes.py")
  try:
    modalities_lib.register_from_config(config.modalities)
  except ValueError as e:
    raise ConfigError(f"config.modalities: {e}") from None
  require(int(config.samples_per_shard) > 0, "samples_per_shard", "must be positive.")
  require(int(config.random_views) >= 0, "random_views", "must be >= 0.")
  require(int(config.batch_size) > 0, "batch_size", "must be positive.")
  toks = Tokenizers(config)
  srcs, sizes = {}, {}
  for split in config.splits:
    srcs[split] = sources.make_source(config.data, split)
    n = len(srcs[split])
    require(n > 0, "data", f"split {split!r} of {srcs[split]!r} has no samples.")
    sizes[split] = min(n, int(config.max_samples)) if int(config.max_samples) > 0 else n
  readers = {s: _Reader(toks, srcs[s], s, config.data.get("on_error", "raise"))
             for s in config.splits}
  wanted = make_spec(config, toks, sizes)
  spec = token_shards.check_spec(out_dir, wanted)  # Refuses other settings; writes nothing.
  if record_config:
    workdir_lib.write_config(config, out_dir)
  if spec is None:
    os.makedirs(out_dir, exist_ok=True)
    spec = token_shards.write_or_check_spec(out_dir, wanted)
  p, n_proc = jax.process_index(), jax.process_count()
  summary = {"dir": os.path.abspath(out_dir), "splits": {}}
  for split in config.splits:
    info = spec["splits"][split]
    n, num_shards, num_views = info["num_samples"], info["num_shards"], info["num_views"]
    token_shards.remove_stale_partials(out_dir, split)
    todo = [s for s in token_shards.missing_shards(out_dir, split, spec) if s % n_proc == p]
    samples = sum(end - start for start, end in
                  (token_shards.shard_range(n, s, num_shards) for s in todo))
    views = _Views(config, split, num_views)
    chunk = max(1, int(config.batch_size) // num_views)
    t0 = time.time()
    bar = tqdm(total=int(samples), desc=f"pretokenize {split}", unit="sample",
               disable=not progress, file=sys.stderr, mininterval=1.0)
    read = readers[split]
    with bar:
      for s in todo:
        start, end = token_shards.shard_range(n, s, num_shards)
        path = token_shards.shard_path(out_dir, split, s, num_shards)
        with record_files.RecordWriter(path) as w:
          for lo in range(start, end, chunk):
            idx = list(range(lo, min(lo + chunk, end)))
            good = [(i, x) for i, x in ((i, read(i)) for i in idx) if x is not None]
            if good:
              for record in _tokenize_chunk(toks, [x for _, x in good], [i for i, _ in good],
                                            views, chunk * num_views):
                w.write(record)
            bar.update(len(idx))
          token_shards.write_skipped(path, {i: r for i, r in read.skipped.items()
                                            if start <= i < end})
          w.commit()
    seconds = time.time() - t0
    skipped = token_shards.skipped_samples(out_dir, split, spec)
    summary["splits"][split] = {
        "samples": n - len(skipped), "skipped": len(skipped), "shards": num_shards,
        "views": num_views, "written_shards": len(todo), "seconds": round(seconds, 1),
        "samples_per_sec": round(samples / seconds, 1) if todo and seconds > 0 else None}
    if skipped:
      summary["splits"][split]["skipped_first"] = [skipped[i] for i in sorted(skipped)[:5]]
      logging.warning("pretokenize: %s: skipped %d bad samples (listed in %s/*.skipped.json)",
                      split, len(skipped), os.path.join(out_dir, split))
    logging.info("pretokenize: %s: %d shards written in %.1f s", split, len(todo), seconds)
  missing = {s: token_shards.missing_shards(out_dir, s, spec) for s in config.splits}
  summary["complete"] = not any(missing.values())
  train = config.data.train_split
  if int(config.grid_samples) > 0 and summary["complete"] and train in config.splits and p == 0:
    summary["grid"] = views_grid(os.path.join(out_dir, "views_grid.png"), out_dir, train, toks,
                                 int(config.grid_samples))
  return summary


def views_grid(path: str, directory: str, split: str, toks: Tokenizers, num: int) -> str:
  """PNG: for the first `num` samples of `split`, each view decoded from its tokens."""
  source = token_shards.TokenShardSource(directory, split)
  rows, captions = [], []
  kinds = {}
  for i in range(min(num, len(source))):
    rec = source[i]
    for v in range(len(rec["crop"])):
      row = {}
      for name, tok in toks.image.items():
        cells, kinds[name] = tok.picture(tok.decode(np.asarray(rec[name][v:v + 1], np.int32)))
        row[name] = cells[0]
      rows.append(row)
      y0, x0, h, w, flipped = rec["crop"][v]
      text = "".join(f" | {n}: {toks.text[n].decode(rec[n][v])}" for n in toks.text)
      captions.append(f"{split} {int(rec['id'])} view {v}: crop y0={y0:.0f} x0={x0:.0f}"
                      f" {h:.0f}x{w:.0f}{' flipped' if flipped else ''}{text}")
  return pictures.save_grid(path, rows, captions, kinds=kinds,
                        titles={n: f"{n} (decoded tokens)" for n in toks.image})


def run(config, workdir: str) -> dict:
  """The `pretokenize` job: the shards (and config.json) go to `workdir` itself."""
  return pretokenize(config, workdir, record_config=True)
