"""Random masked batches in m4's format, for tests and benchmarks.

    batch = synthetic.masked_batch(["rgb", "depth", "caption"], batch_size=8,
                                   num_inputs=64, num_targets=64, seed=0)

Per sample, the input and target budgets are split over the modalities by a
symmetric Dirichlet (as 4M's "all to all" mixture), clipped to what each
modality holds; image inputs and targets are disjoint random token sets;
a caption of random length has its inputs at the start of the tensor and
its targets (a sentinel, words, [EOS]) at position L + 1. Token ids are
random: this is for shapes, speed and masking semantics, not for learning.
The real pipeline's masking lives in m4/data/masking.py.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from m4 import modalities

FIRST_WORD_ID = 204  # After [PAD] [UNK] [SOS] [EOS] and 200 sentinels.
EOS_ID = 3
SENTINEL_ID = 4


def _split(rng, total: int, capacity: np.ndarray, alpha: float) -> np.ndarray:
  """Integer budgets summing to <= total, each <= its capacity."""
  out = np.zeros(len(capacity), np.int64)
  if total <= 0 or capacity.sum() == 0:
    return out
  share = rng.dirichlet(np.full(len(capacity), alpha))
  out = np.minimum(np.floor(share * total).astype(np.int64), capacity)
  # Hand out what flooring or clipping left over, one token at a time.
  for _ in range(total):
    left = total - out.sum()
    room = capacity - out
    if left <= 0 or room.sum() == 0:
      break
    out[rng.choice(len(capacity), p=room / room.sum())] += 1
  return out


def masked_batch(names: Sequence[str], batch_size: int, num_inputs: int, num_targets: int,
                 *, seed: int = 0, alpha: float = 1.0, input_names: Sequence[str] | None = None,
                 target_names: Sequence[str] | None = None, image_size: int | None = None,
                 patch_size: int = 16) -> dict:
  """A masked batch of `names`, numpy arrays in m4's format.

  Args:
    names: modalities in the batch.
    batch_size, num_inputs, num_targets: batch size and per-sample budgets.
    seed: numpy seed.
    alpha: Dirichlet concentration of the budget splits.
    input_names / target_names: the modalities that may be inputs / targets
      (default: `names`, filtered by their registry roles).
    image_size: pixel modalities' image side (default grid * patch_size).
  """
  rng = np.random.default_rng(seed)
  mods = [modalities.get(n) for n in names]
  can_in = [m.name in (input_names or names) and modalities.INPUT in m.roles for m in mods]
  can_out = [m.name in (target_names or names) and modalities.TARGET in m.roles for m in mods]
  batch = {}
  for m in mods:
    n = 2 * (m.num_tokens + 1) if m.is_sequence else m.num_tokens
    batch[m.name] = dict(input_mask=np.zeros((batch_size, n), bool),
                         target_mask=np.zeros((batch_size, n), bool),
                         decoder_attention_mask=np.zeros((batch_size, n), np.int32))
    if m.kind == modalities.PIXELS:
      side = image_size or m.grid[0] * patch_size
      batch[m.name]["tensor"] = rng.standard_normal(
          (batch_size, side, side * m.grid[1] // m.grid[0], 3)).astype(np.float32)
    else:
      low = FIRST_WORD_ID if m.is_sequence else 0
      batch[m.name]["tensor"] = rng.integers(low, m.vocab_size, (batch_size, n)).astype(np.int32)
  for b in range(batch_size):
    cap_len = {m.name: int(rng.integers(2, m.num_tokens)) for m in mods if m.is_sequence}
    avail_in = np.array([(cap_len[m.name] if m.is_sequence else m.num_tokens) * c
                         for m, c in zip(mods, can_in)])
    k_in = _split(rng, num_inputs, avail_in, alpha)
    avail_out = np.array([(cap_len[m.name] + 1 if m.is_sequence else m.num_tokens - k) * c
                          for m, c, k in zip(mods, can_out, k_in)])
    k_out = _split(rng, num_targets, avail_out, alpha)
    for m, ki, ko in zip(mods, k_in, k_out):
      d = batch[m.name]
      if m.is_sequence:
        ll = m.num_tokens + 1
        d["input_mask"][b, :ki] = True
        d["target_mask"][b, ll:ll + ko] = True
        d["decoder_attention_mask"][b, ll:ll + ko] = 1
        if ki:
          d["tensor"][b, ki - 1] = SENTINEL_ID
        if ko:
          d["tensor"][b, ll] = SENTINEL_ID
          d["tensor"][b, ll + ko - 1] = EOS_ID
        d["tensor"][b, ki:ll] = 0
        d["tensor"][b, ll + ko:] = 0
        continue
      perm = rng.permutation(m.num_tokens)
      d["input_mask"][b, perm[:ki]] = True
      tgt = np.sort(perm[ki:ki + ko])
      d["target_mask"][b, tgt] = True
      if ko and m.kind != modalities.PIXELS:
        d["decoder_attention_mask"][b, tgt[0]] = ko
  return batch
