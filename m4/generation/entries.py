"""Generation states' entries: what is given and what is to be generated, per modality.

    state = {"rgb": image_entry("rgb", rgb_tokens),            # given: all tokens known
             "caption": text_entry("caption", ["a red [S_1]"], tok)}  # fill one span

A state maps modality names to `{"tensor", "known"}` entries (the layouts:
`m4.generation.sampler`'s docstring); each maker takes a Modality spec (e.g.
`model.cfg.modality(name)`) or a registry name and checks shapes and
sentinels on the host.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from m4 import modalities
from m4.data import masking
from m4.tokenizers import text as text_lib

# The text vocabulary's layout (m4's and 4M's): [PAD] [UNK] [SOS] [EOS] [S_0]..[S_199].
PAD_ID = 0
EOS_ID = 3
FIRST_SENTINEL_ID = text_lib.FIRST_SENTINEL_ID
NUM_SENTINELS = 200


def sentinel(i: int) -> int:
  """The id of [S_i]."""
  return FIRST_SENTINEL_ID + i


def is_sentinel(ids):
  xp = jnp if isinstance(ids, jax.Array) else np
  ids = xp.asarray(ids)
  return (ids >= FIRST_SENTINEL_ID) & (ids < FIRST_SENTINEL_ID + NUM_SENTINELS)


def known_shape(entry) -> int:
  """Tokens per sample an entry could give (its `known` mask's length)."""
  return int(np.shape(entry["known"])[1])


def spec(modality: modalities.Modality | str) -> modalities.Modality:
  return modality if isinstance(modality, modalities.Modality) else modalities.get(modality)


def image_entry(modality: modalities.Modality | str, tokens, known=None) -> dict:
  """An image entry: tokens (B, h, w) or (B, h*w); known defaults to all True."""
  mod = spec(modality)
  name = mod.name
  tokens = np.asarray(tokens)
  if tokens.ndim == 3:
    tokens = tokens.reshape(tokens.shape[0], -1)
  if tokens.ndim != 2 or tokens.shape[1] != mod.num_tokens:
    raise ValueError(f"generation: {name!r} tokens must be (B, {mod.grid[0]}, {mod.grid[1]}) or"
                     f" (B, {mod.num_tokens}); got {tokens.shape}.")
  if known is None:
    known = np.ones(tokens.shape, bool)
  known = np.asarray(known, bool).reshape(tokens.shape)
  return {"tensor": tokens.astype(np.int32), "known": known}


def empty_entry(modality: modalities.Modality | str, batch_size: int) -> dict:
  """Nothing known: the whole modality is to be generated."""
  mod = spec(modality)
  n = mod.num_tokens + 1 if mod.is_sequence else mod.num_tokens
  return {"tensor": np.full((batch_size, n), PAD_ID, np.int32),
          "known": np.zeros((batch_size, n), bool)}


def sequence_entry(modality: modalities.Modality | str, ids: Sequence[Sequence[int]]) -> dict:
  """A sequence entry from per-sample input ids (sentinels mark spans to fill).

  Sentinels must be [S_1], [S_2], ... in order, as masking writes them; ids
  are cut to num_tokens + 1.
  """
  mod = spec(modality)
  name = mod.name
  n = mod.num_tokens + 1
  tensor = np.full((len(ids), n), PAD_ID, np.int32)
  for b, row in enumerate(ids):
    row = np.asarray(row, np.int32)[:n]
    sentinels = row[is_sentinel(row)]
    want = np.arange(1, len(sentinels) + 1) + FIRST_SENTINEL_ID
    if not np.array_equal(sentinels, want):
      raise ValueError(f"generation: {name!r} input {b} has sentinels"
                       f" {(sentinels - FIRST_SENTINEL_ID).tolist()}; they must be"
                       f" [S_1], [S_2], ... in order.")
    tensor[b, :len(row)] = row
  return {"tensor": tensor, "known": tensor != PAD_ID}


def text_entry(modality: modalities.Modality | str, texts: Sequence[str], tokenizer: text_lib.TextTokenizer) -> dict:
  """A sequence entry from text: "a red [S_1] left of [S_2]" fills two spans.

  As masking's inputs: word pieces, then [EOS] unless the text ends in a
  sentinel (the last span then holds the end); "" means write it all.
  """
  ids = []
  for t in texts:
    row = tokenizer.encode(t) if t else []
    if row and not tokenizer.is_sentinel(np.asarray(row[-1:]))[0]:
      row = row + [tokenizer.eos_id]
    ids.append(row)
  return sequence_entry(modality, ids)


def pixel_entry(modality: modalities.Modality | str, images) -> dict:
  """A pixel entry (encoder input only): images (B, H, W, C), every patch known."""
  mod = spec(modality)
  images = np.asarray(images, np.float32)
  return {"tensor": images, "known": np.ones((images.shape[0], mod.num_tokens), bool)}


def check_state(state: Mapping[str, Mapping[str, Any]], spec_of=spec) -> int:
  """The state's batch size, after checking each entry against `spec_of(name)`
  (entries whose spec is None only ride along: their batch size is checked)."""
  sizes = set()
  for name, e in state.items():
    mod = spec_of(name)
    if set(e) != {"tensor", "known"}:
      raise ValueError(f"generation: state[{name!r}] must have 'tensor' and 'known',"
                       f" has {sorted(e)}.")
    if mod is None:
      sizes.add(np.shape(e["known"])[0])
      continue
    n = mod.num_tokens + 1 if mod.is_sequence else mod.num_tokens
    if np.shape(e["known"])[1:] != (n,):
      raise ValueError(f"generation: state[{name!r}]['known'] has shape {np.shape(e['known'])};"
                       f" expected (B, {n}).")
    if mod.kind != modalities.PIXELS and np.shape(e["tensor"]) != np.shape(e["known"]):
      raise ValueError(f"generation: state[{name!r}]['tensor'] has shape {np.shape(e['tensor'])};"
                       f" expected {np.shape(e['known'])}.")
    sizes.add(np.shape(e["known"])[0])
  if len(sizes) != 1:
    raise ValueError(f"generation: the state's entries have different batch sizes {sorted(sizes)}.")
  return sizes.pop()


def merge_sequence(modality: modalities.Modality, tensor: np.ndarray, known: np.ndarray,
                   generated: np.ndarray) -> dict:
  """The full input sequence: each input sentinel replaced by its generated span."""
  ids = []
  for row, kn, gen in zip(tensor, known, generated):
    given = row[kn]
    if not len(given):
      given = np.array([sentinel(1)], np.int32)
    target = np.concatenate([[sentinel(1)], gen[gen != PAD_ID]]).astype(np.int32)
    ids.append(masking.merge_spans(given, target, is_sentinel))
  return sequence_entry_unchecked(modality, ids)


def sequence_entry_unchecked(modality: modalities.Modality | str,
                             ids: Sequence[np.ndarray]) -> dict:
  mod = spec(modality)
  n = mod.num_tokens + 1
  tensor = np.full((len(ids), n), PAD_ID, np.int32)
  known = np.zeros((len(ids), n), bool)
  for b, row in enumerate(ids):
    row = np.asarray(row, np.int32)[:n]
    tensor[b, :len(row)] = row
    known[b, :len(row)] = True
  return {"tensor": tensor, "known": known}
