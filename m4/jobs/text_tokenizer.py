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
"""

from __future__ import annotations

import os
import time

import numpy as np
import tqdm
from absl import logging

from m4 import modalities
from m4 import workdir as workdir_lib
from m4.data import sources
from m4.tokenizers import text as text_lib


def read_captions(data, split: str, limit: int = 0, key: str = "caption") -> list[str]:
  """The `key` strings of `split` of `config.data` (the first `limit` if > 0)."""
  source = sources.make_source(data, split)
  n = len(source) if limit <= 0 else min(limit, len(source))
  captions = []
  for i in tqdm.trange(n, desc=f"captions ({split})", unit="sample", mininterval=2.0):
    sample = source[i]
    if sample is None:  # A source that skips bad samples.
      continue
    if key not in sample:
      raise workdir_lib.ConfigError(
          f"config.data: sample {i} of split {split!r} of {source!r} has no {key!r}"
          f" (it has {sorted(sample)}); a text tokenizer needs captions.")
    value = sample[key]
    captions.append(value.decode() if isinstance(value, bytes) else str(value))
  return captions


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


def run(config, workdir: str) -> dict:
  cfg = config.tokenizer
  try:
    modality = modalities.get(config.modality)
  except KeyError as e:
    raise workdir_lib.ConfigError(f"config.modality: {e}") from None
  workdir_lib.require(modality.is_sequence, "modality",
                      f"{modality.name!r} is a {modality.kind} modality, not text.")
  workdir_lib.require(0 < int(cfg.vocab_size) <= modality.vocab_size, "tokenizer.vocab_size",
                      f"{cfg.vocab_size} must be in 1..{modality.vocab_size}, the vocab_size of"
                      f" modality {modality.name!r} in m4/modalities.py.")
  workdir_lib.require(cfg.name and os.sep not in cfg.name, "tokenizer.name",
                      f"must be a file name without directories, got {cfg.name!r}.")
  out_path = os.path.join(workdir, f"{cfg.name}.json")

  t0 = time.time()
  captions = read_captions(config.data, config.data.train_split, int(config.num_captions),
                           key=modality.data_key)
  workdir_lib.require(len(captions) > 0, "data", "the training split has no captions.")
  t_read = time.time() - t0
  t0 = time.time()
  tok = text_lib.train(captions, vocab_size=int(cfg.vocab_size),
                       num_sentinels=int(cfg.num_sentinels), lowercase=bool(cfg.lowercase),
                       min_frequency=int(cfg.min_frequency),
                       initial_alphabet=str(cfg.initial_alphabet),
                       prune_unused=bool(cfg.prune_unused))
  t_train = time.time() - t0
  if tok.vocab_size > modality.vocab_size:  # initial_alphabet can add pieces.
    raise workdir_lib.ConfigError(
        f"config.tokenizer: the trained vocabulary has {tok.vocab_size} ids, more than"
        f" modality {modality.name!r}'s vocab_size {modality.vocab_size}; lower"
        " tokenizer.vocab_size or shorten tokenizer.initial_alphabet.")
  workdir_lib.write_config(config, workdir)  # Checked: from here on the job writes.
  tok.save(out_path)
  logging.info("text_tokenizer: %s, trained on %d captions in %.1f s", tok, len(captions), t_train)

  evals = read_captions(config.data, config.data.eval_split, int(config.num_eval_captions),
                        key=modality.data_key)
  ids = tok.encode_batch(evals)
  lengths = np.array([len(i) + 1 for i in ids])  # + [EOS].
  exact = np.mean([tok.decode(i) == tok.normalize(c) for i, c in zip(ids, evals)])
  unk = sum(i.count(tok.unk_id) for i in ids) / max(1, sum(len(i) for i in ids))
  plot = os.path.join(workdir, "caption_lengths.png")
  _plot_lengths(plot, lengths, modality.num_tokens)
  return workdir_lib.write_summary(workdir, {
      "tokenizer": out_path,
      "vocab_size": tok.vocab_size,
      "word_pieces": tok.vocab_size - text_lib.FIRST_SENTINEL_ID - tok.num_sentinels,
      "train_captions": len(captions),
      "eval_captions": len(evals),
      "round_trip_exact": float(exact),
      "unk_fraction": float(unk),
      "tokens_mean": float(lengths.mean()),
      "tokens_max": int(lengths.max()),
      "fit_num_tokens": float(np.mean(lengths <= modality.num_tokens)),
      "num_tokens": modality.num_tokens,
      "read_seconds": round(t_read, 1),
      "train_seconds": round(t_train, 2),
      "caption_lengths_png": plot,
  })
