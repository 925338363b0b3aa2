"""Trains the WordPiece caption tokenizer on the captions of a data source.

    python -m m4.main --config=configs/tokenizers/caption_scenes.py --workdir=DIR

Reads the `caption` of every sample of `config.data`'s training split (the
first `config.num_captions` if > 0), trains `m4.tokenizers.text.train` with
`config.tokenizer`, and writes to DIR:

  <config.tokenizer.name>.json   the tokenizer (the library's JSON; copy it to
                                 the repository's tokenizers/ to use it by name)
  caption_lengths.png            token counts of the evaluation captions
                                 against the modality's `num_tokens`
  summary.json                   vocabulary size, length statistics, round trip

The summary checks the tokenizer on the evaluation split: the fraction of
captions that round-trip exactly (decode(encode(c)) == normalize(c)), the
fraction of [UNK] tokens, and how many captions fit in the caption modality's
`num_tokens` with their [EOS]. A tokenizer larger than the modality's
`vocab_size` is refused.

`config.shared_with` names more sequence modalities (e.g. boxes, palette,
metadata) whose texts join the training texts: one WordPiece vocabulary for
every text-like modality, as 4M's; the summary gives each its own health
figures (`<name>/fit_num_tokens`, ...).
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np
import tqdm
from absl import logging

from m4 import modalities
from m4 import workdir as workdir_lib
from m4.data import scene_sequences
from m4.data import sources
from m4.tokenizers import text as text_lib


def read_texts(data, split: str, keys: Sequence[str], limit: int = 0) -> dict[str, list[str]]:
  """{key: the `key` strings of `split` of `config.data`} (the first `limit`
  samples if > 0); boxes / palette / metadata texts (`<kind>_text`) are
  written from the sample's extras (m4.data.scene_sequences)."""
  source = sources.make_source(data, split)
  n = len(source) if limit <= 0 else min(limit, len(source))
  texts = {key: [] for key in keys}
  for i in tqdm.trange(n, desc=f"texts ({split})", unit="sample", mininterval=2.0):
    sample = source[i]
    if sample is None:  # A source that skips bad samples.
      continue
    try:
      sample = scene_sequences.add_texts(sample)
    except ValueError as e:
      raise workdir_lib.ConfigError(f"config.data: {e}; add it to data.modalities.") from None
    for key in keys:
      if key not in sample:
        raise workdir_lib.ConfigError(
            f"config.data: sample {i} of split {split!r} of {source!r} has no {key!r}"
            f" (it has {sorted(sample)}); a text tokenizer needs its texts.")
      value = sample[key]
      texts[key].append(value.decode() if isinstance(value, bytes) else str(value))
  return texts


def _plot_lengths(path: str, lengths: np.ndarray, limit: int):
  # Heavy (matplotlib); only the length histogram needs it.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
  ax.hist(lengths, bins=np.arange(0, max(int(lengths.max()), limit) + 3) - 0.5, color="#4c72b0")
  ax.axvline(limit + 0.5, color="#c44e52", ls="--", label=f"num_tokens = {limit}")
  ax.set_xlabel("word pieces per caption, with [EOS]")
  ax.set_ylabel("captions")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _sequence(name: str, field: str) -> modalities.Modality:
  try:
    modality = modalities.get(name)
  except KeyError as e:
    raise workdir_lib.ConfigError(f"config.{field}: {e}") from None
  workdir_lib.require(modality.is_sequence, field,
                      f"{modality.name!r} is a {modality.kind} modality, not text.")
  return modality


def _health(tok, texts: Sequence[str], num_tokens: int) -> tuple[dict, np.ndarray]:
  """Round trip, [UNK] share and lengths of `texts`, against `num_tokens`."""
  ids = tok.encode_batch(texts)
  lengths = np.array([len(i) + 1 for i in ids])  # + [EOS].
  return {
      "round_trip_exact": float(np.mean([tok.decode(i) == tok.normalize(c)
                                         for i, c in zip(ids, texts)])),
      "unk_fraction": sum(i.count(tok.unk_id) for i in ids) / max(1, sum(len(i) for i in ids)),
      "tokens_mean": float(lengths.mean()),
      "tokens_max": int(lengths.max()),
      "fit_num_tokens": float(np.mean(lengths <= num_tokens)),
      "num_tokens": num_tokens,
  }, lengths


def run(config, workdir: str) -> dict:
  cfg = config.tokenizer
  modality = _sequence(config.modality, "modality")
  shared = [_sequence(n, "shared_with") for n in config.get("shared_with", ())]
  for m in [modality] + shared:
    workdir_lib.require(0 < int(cfg.vocab_size) <= m.vocab_size, "tokenizer.vocab_size",
                        f"{cfg.vocab_size} must be in 1..{m.vocab_size}, the vocab_size of"
                        f" modality {m.name!r} in m4/modalities.py.")
  workdir_lib.require(cfg.name and os.sep not in cfg.name, "tokenizer.name",
                      f"must be a file name without directories, got {cfg.name!r}.")
  out_path = os.path.join(workdir, f"{cfg.name}.json")
  keys = tuple(dict.fromkeys(m.data_key for m in [modality] + shared))

  t0 = time.time()
  texts = read_texts(config.data, config.data.train_split, keys, int(config.num_captions))
  captions = [t for key in keys for t in texts[key]]
  workdir_lib.require(len(captions) > 0, "data", "the training split has no captions.")
  t_read = time.time() - t0
  t0 = time.time()
  tok = text_lib.train(captions, vocab_size=int(cfg.vocab_size),
                       num_sentinels=int(cfg.num_sentinels), lowercase=bool(cfg.lowercase),
                       min_frequency=int(cfg.min_frequency),
                       initial_alphabet=str(cfg.initial_alphabet),
                       prune_unused=bool(cfg.prune_unused))
  t_train = time.time() - t0
  for m in [modality] + shared:
    if tok.vocab_size > m.vocab_size:  # initial_alphabet can add pieces.
      raise workdir_lib.ConfigError(
          f"config.tokenizer: the trained vocabulary has {tok.vocab_size} ids, more than"
          f" modality {m.name!r}'s vocab_size {m.vocab_size}; lower"
          " tokenizer.vocab_size or shorten tokenizer.initial_alphabet.")
  workdir_lib.write_config(config, workdir)  # Checked: from here on the job writes.
  tok.save(out_path)
  logging.info("text_tokenizer: %s, trained on %d texts in %.1f s", tok, len(captions), t_train)

  evals = read_texts(config.data, config.data.eval_split, keys, int(config.num_eval_captions))
  health, lengths = _health(tok, evals[modality.data_key], modality.num_tokens)
  plot = os.path.join(workdir, "caption_lengths.png")
  _plot_lengths(plot, lengths, modality.num_tokens)
  summary = {
      "tokenizer": out_path,
      "vocab_size": tok.vocab_size,
      "word_pieces": tok.vocab_size - text_lib.FIRST_SENTINEL_ID - tok.num_sentinels,
      "train_captions": len(texts[modality.data_key]),
      "eval_captions": len(evals[modality.data_key]),
      **health,
      "read_seconds": round(t_read, 1),
      "train_seconds": round(t_train, 2),
      "caption_lengths_png": plot,
  }
  for m in shared:  # Each modality sharing the vocabulary: its own health.
    for k, v in _health(tok, evals[m.data_key], m.num_tokens)[0].items():
      summary[f"{m.name}/{k}"] = v
  return workdir_lib.write_summary(workdir, summary)
