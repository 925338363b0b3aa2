"""Masked token batches for pretraining, from token shards or tokenized on the fly.

    data = pretrain_data.PretrainData(config)      # checks shards vs tokenizers
    it = data.train_iterator(seed=config.seed)     # checkpointable grain iterator
    batch = next(it)   # {"rgb": {tensor, input_mask, target_mask, decoder_attention_mask}, ..., "id"}
    for batch in data.eval_dataset():               # the validation split, once, padded
      ...

`config.tokens.source` picks where tokens come from:

  * "shards": the token shards in `config.tokens.dir` (`m4.jobs.pretokenize`);
    training picks one of each sample's views per epoch, evaluation view 0.
    The shards' tokenizers must be the ones `config.tokenizers` names (same
    fingerprint), else a ConfigError names both.
  * "on_the_fly": the raw dataset of `config.data` with its aligned random
    crops, tokenized per sample by the VQ tokenizers of `config.tokenizers`
    in the loader's threads (fresh crops every epoch; slower, for small runs;
    `data.num_workers` must be 0: the tokenizers live in this process).

Either way the samples go through `m4.data.masking.Masking(config.masking)`
(in grain, per-sample seeded) and `m4.data.pipeline.make_dataset` (process
sharded, batched, optional workers), so a resumed or multi-host run sees the
same batches.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import grain
import numpy as np

from m4 import modalities as modalities_lib
from m4 import tokenizers
from m4.data import masking as masking_lib
from m4.data import pipeline
from m4.data import token_shards
from m4.tokenizers import text as text_lib
from m4 import value_scales
from m4.workdir import ConfigError, DataError, require

SOURCES = ("shards", "on_the_fly")
_EXTRAS = ("id", "valid")  # Sample keys that batches keep besides the modalities.


class ByModality(grain.transforms.Map):
  """Raw (cropped) sample -> {modality name: value}, as masking reads it.

  Image modalities become VQ token grids (`tokenizers`); pixel and sequence
  modalities take their raw value (image, text). Other keys pass through. A
  value the tokenizer refuses (e.g. a semseg class id out of its range) is a
  DataError naming the sample's id (its index in the split).
  """

  def __init__(self, names: Sequence[str], tokenizers: Mapping[str, Any]):
    self.keys = {n: modalities_lib.get(n).data_key for n in names}
    self.tokenizers = dict(tokenizers)

  def map(self, sample):
    out = {k: v for k, v in sample.items() if k not in self.keys.values()}
    for name, key in self.keys.items():
      if key not in sample:
        continue
      tok = self.tokenizers.get(name)
      if tok is None:
        out[name] = sample[key]
        continue
      try:
        out[name] = np.asarray(tok.encode(np.asarray(sample[key])[None]))[0]
      except ValueError as e:
        raise DataError(f"sample {sample.get('id')} of the split ({key}): {e}") from None
    return out


class KeepKeys(grain.transforms.Map):
  """Drops what batches cannot hold (strings, scene dicts) after masking."""

  def __init__(self, names: Sequence[str]):
    self.keys = tuple(names) + _EXTRAS

  def map(self, sample):
    return {k: sample[k] for k in self.keys if k in sample}


def image_names(names: Sequence[str]) -> list[str]:
  return [n for n in names if modalities_lib.get(n).is_image]


def token_names(names: Sequence[str]) -> list[str]:
  """The modalities made of tokens (every kind but pixels)."""
  return [n for n in names if modalities_lib.get(n).kind != modalities_lib.PIXELS]


class PretrainData:
  """The token source of a pretraining config and its train / eval datasets."""

  def __init__(self, config):
    self.config = config
    tokens = config.tokens
    require(tokens.source in SOURCES, "tokens.source",
            f"{tokens.source!r} is not one of {SOURCES}.")
    self.source = tokens.source
    self.names = tuple(config.masking.modalities)
    named = dict(config.tokenizers or {})
    texts = {}  # Sequences: the text tokenizer `tokenizers` names, else the registry's.
    for n in self.names:
      if named.get(n) and modalities_lib.get(n).is_sequence:
        try:
          texts[n] = text_lib.load(named[n])
        except (ValueError, FileNotFoundError) as e:
          raise ConfigError(f"config.tokenizers.{n}: {e}") from None
    try:
      self.masker = masking_lib.Masking(config.masking, texts)
    except ValueError as e:
      raise ConfigError(str(e) if str(e).startswith("config.") else f"config.masking: {e}") from None
    images = image_names(self.names)
    missing = [n for n in images if not named.get(n)]
    require(not missing, "tokenizers", f"no VQ tokenizer named for the image modalities {missing}.")
    self.tokenizers_wanted = {n: named.get(n) for n in token_names(self.names)}
    if self.source == "shards":
      require(bool(tokens.dir), "tokens.dir", "the directory of the token shards is required.")
      try:
        self.spec = token_shards.read_spec(tokens.dir)
      except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"config.tokens.dir: {e}") from None
      token_shards.check_tokenizers(self.spec, self.tokenizers_wanted, tokens.dir)
    else:
      self.spec = None
      require(int(config.data.num_workers) == 0, "data.num_workers",
              "on-the-fly tokenization runs in this process; use 0 workers (or token shards).")
    self._vq = None

  # --- tokenizers (decoding pictures; on-the-fly tokenization) ---

  def vq_tokenizers(self) -> dict:
    """The VQ tokenizers of the image modalities (loaded once)."""
    if self._vq is None:
      self._vq = {n: tokenizers.load_for_modality(n, self.tokenizers_wanted[n])
                  for n in image_names(self.names)}
    return self._vq

  # --- datasets ---

  def _read(self, split: str, training: bool, *, data=None, transforms=(), seed: int = 0,
            keep_extras: bool = False):
    data = data or self.config.data
    if self.source == "shards":
      try:
        source = token_shards.TokenShardSource(self.config.tokens.dir, split)
      except FileNotFoundError as e:
        raise ConfigError(f"config.tokens.dir: {e}") from None
      first = token_shards.SelectView(self.spec, training=training, names=self.names,
                                      keep_extras=keep_extras)
      return pipeline.make_dataset(data, split, seed=seed, training=training, source=source,
                                   aligned_crop=False, transforms=[first, *transforms])
    keep = tuple(modalities_lib.get(n).data_key for n in self.names)
    data = data.copy_and_resolve_references() if hasattr(data, "copy_and_resolve_references") \
        else dict(data)
    data.modalities = tuple(dict.fromkeys(keep + (("labels", "scene") if keep_extras else ())))
    by_name = ByModality(self.names, self.vq_tokenizers())
    return pipeline.make_dataset(data, split, seed=seed, training=training,
                                 transforms=[by_name, *transforms])

  def train_dataset(self, seed: int) -> grain.IterDataset:
    """Endless masked training batches of `config.data.batch_size` (global)."""
    return self._read(self.config.data.train_split, True, seed=seed,
                      transforms=[self.masker, KeepKeys(self.names)])

  def train_iterator(self, seed: int):
    return iter(self.train_dataset(seed))

  def eval_dataset(self, split: str, batch_size: int, seed: int) -> grain.IterDataset:
    """One ordered pass of masked batches (padding rows: `valid` False)."""
    return self._read(split, False, data=self._with_batch(batch_size), seed=seed,
                      transforms=[self.masker, KeepKeys(self.names)])

  def token_dataset(self, split: str, batch_size: int, *, keep_extras: bool = False):
    """One ordered pass of unmasked samples (central view): token grids, ids
    and images under their modality names, `id`, `valid`; with `keep_extras`
    labels and scene."""
    return self._read(split, False, data=self._with_batch(batch_size), keep_extras=keep_extras)

  def _with_batch(self, batch_size: int):
    data = self.config.data.copy_and_resolve_references()
    data.batch_size = int(batch_size)
    return data


def check_cross_modal(inputs: Sequence[str], targets: Sequence[str]):
  """ConfigError naming `eval.cross_modal` unless image or pixel `inputs`
  can predict image `targets` (cross_modal_batch's batches)."""
  require(bool(inputs) or not targets, "eval.cross_modal.inputs",
          f"is empty; predicting {tuple(targets)} needs at least one input.")
  for name in inputs:
    m = modalities_lib.get(name)
    require(m.is_image or m.kind == modalities_lib.PIXELS, "eval.cross_modal.inputs",
            f"{name!r} is not an image or pixel modality.")
  for name in targets:
    require(modalities_lib.get(name).is_image, "eval.cross_modal.targets",
            f"{name!r} is not an image modality.")


def cross_modal_batch(tokens: Mapping[str, np.ndarray], inputs: Sequence[str], target: str,
                      valid: np.ndarray | None = None) -> dict:
  """A masked batch: every token of `inputs` in, every token of image `target` out.

  `tokens` maps modality names to (B, h, w) token grids or, for pixel
  inputs, (B, H, W, C) images (a `token_dataset` batch). Rows where `valid`
  is False get no inputs and no targets.
  """
  check_cross_modal(inputs, (target,))
  b = np.shape(tokens[inputs[0]])[0]
  ok = np.ones((b,), bool) if valid is None else np.asarray(valid, bool)
  batch = {}
  for name in dict.fromkeys(tuple(inputs) + (target,)):
    m = modalities_lib.get(name)
    pixels = m.kind == modalities_lib.PIXELS
    grid = (value_scales.pixels(tokens[name]) if pixels
            else np.asarray(tokens[name], np.int32).reshape(b, m.num_tokens))
    is_in, is_tgt = name in inputs, name == target
    dam = np.zeros((b, m.num_tokens), np.int32)
    if is_tgt:
      dam[:, 0] = np.where(ok, m.num_tokens, 0)
    batch[name] = {
        "tensor": grid,
        "input_mask": np.broadcast_to(ok[:, None] & is_in, (b, m.num_tokens)).copy(),
        "target_mask": np.broadcast_to(ok[:, None] & is_tgt, (b, m.num_tokens)).copy(),
        "decoder_attention_mask": dam,
    }
  return batch
