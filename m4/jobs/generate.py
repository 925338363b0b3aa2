"""The `generate` job: chained any-to-any generation from a pretrained 4M.

    python -m m4.main --config=configs/generate/rgb2all.py --workdir=DIR \
        --config.init=PRETRAIN_WORKDIR

For held-out samples of `config.data` (`config.split`), the `config.inputs`
are tokenized from the ground truth (VQ tokenizers, text tokenizer; pixel
inputs such as `rgb_pixels` take the image itself) and the
`config.targets` generated in order (`config.chained`: each finished target
becomes an input of the next), each as `config.decoding.<target>` says
(m4.generation.Step fields). Writes:

  DIR/grid.png            inputs | generated (decoded) | ground truth, per
                          sample; captions (given, generated, true) under rows
  DIR/generated.json      per sample: id, generated tokens, caption texts
  DIR/eval/metrics.json   quality of each target against the ground truth,
                          the tokenizers' reconstruction of the ground truth
                          (the ceiling) and generation seconds per sample

Quality (m4.generation.quality): depth abs-rel / delta1, semseg mIoU, caption
(shape, colour) pair precision / recall against the scene, generated boxes
texts against the true boxes, and whether a generated semseg follows the
scene's texts (given or not, so steered and unsteered maps compare):
object-presence F1 of the shapes the caption names, the hit rate of the
boxes of the boxes text, the object count of the metadata text, and for RGB
the distance of its dominant colours to the palette text's. Every figure
has its chance level beside it, `<figure>/other_scene`: the same outputs
scored against another test scene's ground truth or text (a generator that
ignores its condition scores there; e.g. a semseg map of sky and ground
alone reaches about the same mIoU against any scene).

Config fields:
  init: the pretraining workdir (config.json with `model` [and `modalities`],
    checkpoints/ with the parameters under state["model"] or ["params"]).
  seed: generation randomness (per batch: fold_in(seed, batch index)).
  data: the held-out data (m4.data.pipeline.data_config fields).
  split, num_samples (0: the whole split), grid_rows.
  tokenizers: {modality: VQ tokenizer name or directory, or a text tokenizer
    file for a sequence}; "" or a modality not listed: the one the
    pretraining run's config.json names (its `tokenizers`), else the
    registry's `tokenizer` name (m4.tokenizers.load). A converted 4M
    tokenizer (m4.tools.convert_4m_tokenizer) decodes its targets in 4M's
    units (COCO classes, per-image standardised depth), drawn as 4M's demo
    draws them; they are not scored against the ground truth.
  pixel_normalization: "symmetric" ([0, 1] -> [-1, 1], m4's pixel inputs) or
    "imagenet" (a converted 4M's rgb@224 input) for pixel inputs.
  diffusion_steps: DDIM steps when a converted 4M DiVAE tokenizer decodes.
  inputs: modalities given from the ground truth.
  targets: modalities generated, in order; chained: see above.
  decoding: {target: Step fields}.
  use_cache: captions decoded with the key/value cache (False: 4M's re-run
    of the decoder per token, for comparison).
  presence_min_pixels: pixels from which a shape counts as present (and a
    region as an object, for the boxes and count figures).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from m4 import generation
from m4 import modalities
from m4 import pictures
from m4 import tokenizers as tokenizers_lib
from m4 import workdir as workdir_lib
from m4.data import pipeline
from m4.data import scene_sequences
from m4.data import sources
from m4 import value_scales
from m4.generation import quality
from m4.models import pretrained
from m4.tokenizers import released_tokenizer
from m4.tokenizers import text as text_lib
from m4.workdir import require

def _check(config, steps, model):
  require(int(config.num_samples) >= 0, "num_samples", "must be >= 0.")
  require(int(config.grid_rows) >= 0, "grid_rows", "must be >= 0.")
  require(config.pixel_normalization in value_scales.PIXEL_NORMALIZATIONS,
          "pixel_normalization", f"{config.pixel_normalization!r} is not one of"
          f" {value_scales.PIXEL_NORMALIZATIONS}.")
  require(int(config.diffusion_steps) >= 1, "diffusion_steps", "must be >= 1.")
  inputs, targets = tuple(config.inputs), tuple(config.targets)
  for name in inputs:
    require(name in modalities.names(), "inputs", f"unknown modality {name!r}.")
    require(name in model.cfg.encoder_modalities, "inputs",
            f"{name!r} is not an input of the model ({model.cfg.encoder_modalities}).")
    require(name not in targets, "inputs", f"{name!r} is also a target.")
  for step in steps:
    require(step.modality in model.cfg.decoder_modalities, "targets",
            f"{step.modality!r} is not a target of the model ({model.cfg.decoder_modalities}).")
    later = targets[targets.index(step.modality):]
    for name in step.cfg_conditions or ():
      require(name in inputs or (config.chained and name not in later),
              f"decoding.{step.modality}.cfg_conditions",
              f"{name!r} is not an input of this step.")


def _know_modalities_of(cfg, field: str) -> None:
  """Lets this job's config name the model's modalities (e.g. a converted
  model's 14x14 grids): the model itself reads only its own specs."""
  try:
    modalities.register_from_config(cfg.modalities_dict())
  except ValueError as e:
    raise workdir_lib.ConfigError(f"config.{field}: {e}") from None


def load_tokenizers(init: str, names, overrides=None):
  """({image modality: VQTokenizer or ReleasedTokenizer}, {sequence modality:
  TextTokenizer}).

  A tokenizer is the one `overrides` names, else the one the run at `init`
  names in its config.json (`tokenizers`), else the registry's; a failure is
  a ConfigError of `tokenizers.<modality>` naming the path.
  """
  vq, text = {}, {}
  run = workdir_lib.read_json(os.path.join(init, pretrained.CONFIG)).get("tokenizers")
  paths = {k: v for k, v in dict(run or {}).items() if v}
  paths.update({k: v for k, v in dict(overrides or {}).items() if v})
  for name in names:
    mod = modalities.get(name)
    if mod.is_image:
      vq[name] = tokenizers_lib.load_for_modality(name, paths.get(name))
    elif mod.is_sequence:
      where = paths.get(name) or mod.tokenizer
      require(bool(where), f"tokenizers.{name}", "names no text tokenizer for this modality"
              " (a converted 4M's caption: 4M's text_tokenizer_4m_wordpiece_30k.json).")
      try:
        text[name] = text_lib.load(where)
      except (FileNotFoundError, ValueError) as e:
        raise workdir_lib.ConfigError(f"config.tokenizers.{name}: {e}") from None
  return vq, text


def _data_config(config):
  data = config.data.copy_and_resolve_references()
  with data.unlocked():
    data.modalities = ()  # Every raw key: ground truth for the metrics.
  return data


def _conditions(config, k: int) -> tuple[str, ...]:
  targets = tuple(config.targets)
  return tuple(config.inputs) + (targets[:k] if config.chained else ())


def _label(conditions, target) -> str:
  return f"{'+'.join(conditions) or 'nothing'}->{target}"


def run(config, workdir: str) -> dict:
  model = pretrained.load(config.init)
  _know_modalities_of(model.cfg, "init")
  steps = generation.steps_from_config(tuple(config.targets), config.decoding)
  _check(config, steps, model)
  gen = generation.Generator(model)
  names = tuple(config.inputs) + tuple(config.targets)
  vq, text = load_tokenizers(config.init, names, config.tokenizers)
  data = _data_config(config)
  total = len(sources.make_source(data, config.split))
  workdir_lib.write_config(config, workdir)  # Checked: from here on the job writes.
  n = total if not config.num_samples else min(int(config.num_samples), total)
  num_batches = pipeline.num_eval_batches(data, n)
  it = pipeline.make_iterator(data, config.split, seed=config.seed, training=False)
  key = jax.random.key(config.seed)
  scorers = {name: _scorer(tok) for name, tok in vq.items() if not _released(tok)}
  min_pixels = int(config.presence_min_pixels)  # A steering figure's shape is present from here.
  picture_kinds = {}  # Converted 4M tokenizers' targets: drawn as 4M's demo draws them.
  sums, ceiling = quality.Sums(), quality.Sums()
  finalize, ceiling_finalize = {}, {}
  seconds = {s.modality: [] for s in steps}
  rows, captions, records = [], [], []
  seen = 0
  for index in tqdm(range(num_batches), desc="generate", unit="batch"):
    batch = next(it)
    valid = np.asarray(batch["valid"]) & (seen + np.arange(len(batch["valid"])) < n)
    seen += len(valid)
    state = {}
    for name in config.inputs:
      mod = modalities.get(name)
      raw = batch[mod.data_key]
      if mod.is_sequence:
        state[name] = generation.text_entry(name, [str(t) for t in raw], text[name])
      elif mod.kind == modalities.PIXELS:
        state[name] = generation.pixel_entry(
            name, value_scales.pixels(raw, config.pixel_normalization))
      else:
        state[name] = generation.image_entry(name, vq[name].encode(np.asarray(raw)))
    batch_key = jax.random.fold_in(key, index)
    result = gen.generate(state, steps, seed=batch_key, chained=bool(config.chained),
                          use_cache=bool(config.use_cache))
    if index == 0:  # The first call compiled: time a second one.
      result = gen.generate(state, steps, seed=batch_key, chained=bool(config.chained),
                            use_cache=bool(config.use_cache))
    for name, s in result.seconds.items():
      seconds[name].append(s / len(valid))
    decoded, texts = {}, {}
    for k, step in enumerate(steps):
      name = step.modality
      mod = modalities.get(name)
      label = _label(_conditions(config, k), name)
      entry = result.state[name]
      if mod.is_sequence:
        texts[name] = text[name].decode_batch(entry["tensor"])
        score = _text_scorer(mod, batch, valid)
        if score is not None:
          # The chance level: another scene's generated text against this one.
          other = _other_scenes(np.asarray(texts[name], object), valid).tolist()
          _add_scored(sums, finalize, label, score[0](texts[name]), score[0](other), score[1])
          if mod.data_key in batch:  # The true text through the text tokenizer.
            truth = [text[name].decode(text[name].encode(str(t))) for t in batch[mod.data_key]]
            ceiling.add(name, score[0](truth))
            ceiling_finalize[name] = score[1]
        continue
      tok = vq[name]
      tokens = entry["tensor"].reshape((-1,) + tuple(mod.grid))
      truth = batch.get(mod.data_key)
      if _released(tok):  # 4M's units: decoded and drawn, not scored.
        decoded[name], picture_kinds[name] = tok.picture(tok.decode(
            tokens, seed=index, steps=int(config.diffusion_steps) if tok.diffusion else None))
        continue
      if truth is None:
        decoded[name] = np.asarray(tok.decode(tokens))
        continue
      truth = tok.io.check(np.asarray(truth), tok.image_size)
      images, got, chance, best, recon = scorers[name](tokens, truth, _other_scenes(truth, valid),
                                                       valid)
      decoded[name] = np.asarray(images)
      _add_scored(sums, finalize, label, got, chance, tok.io.metrics_from_sums)
      ceiling.add(name, best)
      ceiling_finalize[name] = tok.io.metrics_from_sums
      # Steering: does the image follow the scene's texts (given ones or not, so
      # an image from RGB or from another text is scored beside a steered one)?
      for (image_key, text_key), (what, sums_fn, figures_fn) in _STEERING.items():
        if image_key != mod.data_key or text_key not in batch:
          continue
        given = np.asarray(batch[text_key])
        # Against the scene's own text, and (the chance level) another scene's.
        _add_scored(sums, finalize, f"{label}/{what}",
                    sums_fn(decoded[name], given, valid, min_pixels),
                    sums_fn(decoded[name], _other_scenes(given, valid), valid, min_pixels),
                    figures_fn)
        ceiling.add(f"{name}/{what}", sums_fn(np.asarray(recon), given, valid, min_pixels))
        ceiling_finalize[f"{name}/{what}"] = figures_fn
    for b in np.flatnonzero(valid):
      record = {"id": int(batch["id"][b]), "tokens": {}, "captions": {}}
      for step in steps:
        name = step.modality
        if name in texts:
          record["captions"][name] = texts[name][b]
          record["tokens"][name] = result.state[name]["tensor"][b][
              result.state[name]["known"][b]].tolist()
        else:
          record["tokens"][name] = result.state[name]["tensor"][b].tolist()
      records.append(record)
      if len(rows) < int(config.grid_rows):
        rows.append(_grid_row(config, batch, b, decoded))
        captions.append(_grid_caption(config, batch, b, texts))

  figures = sums.figures(finalize)
  metrics = {
      "split": config.split, "num_samples": len(records), "init": config.init,
      "generated": figures, "ceiling": ceiling.figures(ceiling_finalize),
      "seconds_per_sample": {k: float(np.mean(v)) for k, v in seconds.items() if v},
      "decoding": {s.modality: _describe(s) for s in steps},
      "chained": bool(config.chained), "use_cache": bool(config.use_cache),
  }
  eval_dir = os.path.join(workdir, "eval")
  workdir_lib.write_json(os.path.join(eval_dir, "metrics.json"), metrics)
  grid_path = os.path.abspath(os.path.join(workdir, "grid.png"))
  if jax.process_index() == 0:
    _write_records(os.path.join(workdir, "generated.json"), records)
    if rows:
      pictures.save_grid(grid_path, rows, captions, kinds=_grid_kinds(rows, picture_kinds),
                         depth_range=_depth_range(rows))
  logging.info("generate: wrote %s", eval_dir)
  summary = {"grid": grid_path, "metrics": os.path.abspath(os.path.join(eval_dir, "metrics.json")),
             "num_samples": metrics["num_samples"],
             "seconds_per_sample": metrics["seconds_per_sample"]}
  for label, figs in figures.items():
    for k, v in figs.items():
      if isinstance(v, float):
        summary[f"{label}/{k}"] = v
  return summary


# A generated image (data key) is scored against each of these texts (data
# keys) the batch holds: (figure name, sums, figures) of m4.generation.quality.
_STEERING = {
    ("semseg", "caption"): ("presence", quality.presence_sums, quality.presence_figures),
    ("semseg", "boxes_text"): ("boxes", quality.box_sums, quality.box_figures),
    ("semseg", "metadata_text"): ("count", quality.count_sums, quality.count_figures),
    ("rgb", "palette_text"): ("palette", quality.palette_sums, quality.palette_figures),
}
# Given texts drawn in the grid (m4.data.scene_sequences.picture): data key -> kind.
_PICTURED = {"boxes_text": "boxes", "palette_text": "palette", "instances_text": "instances"}


def _add_scored(sums, finalize, figure: str, own, chance, figures_fn) -> None:
  """Adds `figure`'s sums and its chance level's (`<figure>/other_scene`),
  both turned into figures by `figures_fn`."""
  sums.add(figure, own)
  sums.add(f"{figure}/other_scene", chance)
  finalize[figure] = finalize[f"{figure}/other_scene"] = figures_fn


def _other_scenes(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """`values` (texts or images, batch first) with each valid sample's replaced
  by the next valid sample's (the last by the first): what a generator that
  ignored its condition would match."""
  out = values.copy()
  rows = np.flatnonzero(valid)
  out[rows] = values[np.roll(rows, -1)]
  return out


def _text_scorer(mod, batch, valid):
  """(texts -> sums, figures) for a generated text of `mod`, or None: caption
  pairs against the scene, boxes or instances against the true text."""
  if mod.data_key == "caption" and "scene" in batch:
    return (lambda t: quality.caption_pair_sums(t, batch["scene"], valid),
            quality.caption_pair_figures)
  for kind in ("boxes", "instances"):
    if mod.data_key == f"{kind}_text" and mod.data_key in batch:
      return (lambda t, k=kind: quality.text_match_sums(k, t, batch[mod.data_key], valid),
              quality.text_match_figures(kind))
  return None


def _write_records(path: str, records) -> None:
  """{"samples": [...]} with one compact line per sample, written atomically."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write('{"samples": [\n')
    f.write(",\n".join(json.dumps(r, separators=(",", ":")) for r in records))
    f.write("\n]}\n")
  os.replace(tmp, path)


def _depth_range(rows):
  """The true depths' range (so generated depth is drawn on the same scale)."""
  truth = [r[c] for r in rows for c in r if c.startswith("depth (truth")]
  return pictures.valid_depth_range(truth) if truth else None


def _released(tok) -> bool:
  """A converted 4M tokenizer: decodes in 4M's units, with no m4 metrics."""
  return isinstance(tok, released_tokenizer.ReleasedTokenizer)


def _scorer(tok):
  """A jitted (tokens, truth, other scenes' truth, valid) -> (decoded images,
  metric sums of the generation against the truth and against the other
  scenes' (the chance level), metric sums of the tokenizer's reconstruction
  of the truth, that reconstruction)."""

  def score(tokens, truth, other, valid):
    images, output = tok.decode_traced(tokens)
    _, recon = tok.decode_traced(tok.encode_traced(truth))
    return (images, tok.io.metric_sums(output, truth, valid),
            tok.io.metric_sums(output, other, valid),
            tok.io.metric_sums(recon, truth, valid), tok.io.postprocess(recon))

  return jax.jit(score)


def _describe(step: generation.Step) -> str:
  if step.scheme == "autoregressive":
    how = f"autoregressive (up to {step.length} tokens)"
  else:
    how = f"{step.scheme}, {step.num_steps} steps"
    if step.scheme == "maskgit":
      how += f" ({step.token_schedule})"
  how += f", temperature {step.temperature:g} ({step.temperature_schedule})"
  if step.top_k:
    how += f", top-k {step.top_k}"
  if step.top_p:
    how += f", top-p {step.top_p:g}"
  if step.guided:
    how += f", guidance {step.cfg_scale:g}"
  return how


def _grid_row(config, batch, b, decoded) -> dict:
  row = {}
  for name in config.inputs:
    mod = modalities.get(name)
    if not mod.is_sequence:
      row[f"{name} (input)"] = np.asarray(batch[mod.data_key][b])
    elif mod.data_key in _PICTURED:  # Boxes as outlines, a palette as colour bands.
      size = np.shape(decoded[config.targets[0]])[1:3] if config.targets[0] in decoded else None
      drawn = scene_sequences.picture(_PICTURED[mod.data_key], str(batch[mod.data_key][b]),
                                      size or (64, 64))
      if drawn is not None:
        row[f"{name} (input)"] = drawn
  for name in config.targets:
    mod = modalities.get(name)
    if mod.is_sequence:
      continue
    row[f"{name} (generated)"] = decoded[name][b]
    if mod.data_key in batch:
      row[f"{name} (truth)"] = np.asarray(batch[mod.data_key][b])
  return row


def _grid_kinds(rows, picture_kinds) -> dict:
  kinds = {}
  for col in rows[0]:
    base = col.split(" ")[0]
    if col == f"{base} (generated)" and base in picture_kinds:
      kinds[col] = picture_kinds[base]
    elif base not in modalities.names():
      kinds[col] = "gray"
    elif modalities.get(base).data_key in _PICTURED:
      kinds[col] = "semseg" if modalities.get(base).data_key == "boxes_text" else "rgb"
    elif modalities.get(base).data_key in pictures.KINDS:
      kinds[col] = modalities.get(base).data_key
  return kinds  # Others (e.g. a converted 4M's "normal") are guessed by m4.pictures.


def _grid_caption(config, batch, b, texts) -> str:
  parts = []
  for name in config.inputs:
    if modalities.get(name).is_sequence:
      parts.append(f"given: {batch[modalities.get(name).data_key][b]}")
  for name in config.targets:
    if name in texts:
      parts.append(f"generated: {texts[name][b]}")
      if modalities.get(name).data_key in batch:
        parts.append(f"| true: {batch[modalities.get(name).data_key][b]}")
  return " ".join(parts)
