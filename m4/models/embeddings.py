"""Fixed positions and the gathering of a fixed number of token slots.

A masked batch holds, per modality, every token and masks saying which are
encoder inputs or decoder targets. The model works on a fixed number of
*slots* per sample: `select_slots` puts the selected tokens of all modalities
first (stable: modality order, then position) and padding last, and records
for each slot its modality, its source position and whether it is valid.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

TEMPERATURE = 10000.0


def _omega(n: int) -> np.ndarray:
  # float32 throughout, as the reference computes its tables.
  k = np.arange(n, dtype=np.float32) / np.float32(n)
  return (np.float32(1.0) / (np.float32(TEMPERATURE) ** k)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def sincos_1d(length: int, dim: int) -> np.ndarray:
  """(length, dim): position p -> [sin(p w), cos(p w)], w_k = 10000^(-k / (dim/2))."""
  out = np.outer(np.arange(length, dtype=np.float32), _omega(dim // 2)).astype(np.float32)
  table = np.concatenate([np.sin(out), np.cos(out)], axis=1).astype(np.float32)
  table.setflags(write=False)
  return table


@functools.lru_cache(maxsize=64)
def sincos_2d(h: int, w: int, dim: int) -> np.ndarray:
  """(h * w, dim): token n at row i = n // w, column j = n % w ->
  [sin(i w), cos(i w), sin(j w), cos(j w)], w_k = 10000^(-k / (dim/4)).

  For square grids this is exactly 4M's table; for h != w the reference's
  table is not row-major (it swaps the roles of h and w), m4's is.
  """
  n = np.arange(h * w)
  omega = _omega(dim // 4)
  rows = np.outer((n // w).astype(np.float32), omega).astype(np.float32)
  cols = np.outer((n % w).astype(np.float32), omega).astype(np.float32)
  table = np.concatenate([np.sin(rows), np.cos(rows), np.sin(cols), np.cos(cols)], axis=1)
  table = table.astype(np.float32)
  table.setflags(write=False)
  return table


@struct.dataclass
class Slots:
  """Which source token fills each of S slots per sample.

  Attributes:
    modality: (B, S) int32 index into the model's modality list (-1: padding).
    position: (B, S) int32 position within that modality's tensor (0: padding).
    valid: (B, S) bool, False at padding slots.
  """

  modality: jax.Array
  position: jax.Array
  valid: jax.Array

  def of(self, index: int) -> jax.Array:
    """(B, S) bool: valid slots of modality `index`."""
    return self.valid & (self.modality == index)


def select_slots(selected: Sequence[jax.Array], indices: Sequence[int], num: int) -> Slots:
  """The first `num` selected tokens over all modalities, padding last.

  Args:
    selected: per modality, (B, n_m) bool, True = selected.
    indices: per modality, its index in the model's modality list.
    num: slots per sample (static).
  """
  sel = jnp.concatenate([s.astype(bool) for s in selected], axis=1)
  mod = np.concatenate([np.full(s.shape[1], i, np.int32) for s, i in zip(selected, indices)])
  pos = np.concatenate([np.arange(s.shape[1], dtype=np.int32) for s in selected])
  total = sel.shape[1]
  if num > total:  # More slots than tokens: pad with never-selected entries.
    sel = jnp.pad(sel, ((0, 0), (0, num - total)))
    mod = np.concatenate([mod, np.full(num - total, -1, np.int32)])
    pos = np.concatenate([pos, np.zeros(num - total, np.int32)])
  # A stable sort on "not selected" keeps the selected tokens first, in order.
  keep = jnp.argsort(~sel, axis=1, stable=True)[:, :num]
  valid = jnp.take_along_axis(sel, keep, axis=1)
  modality = jnp.where(valid, jnp.asarray(mod)[keep], -1)
  position = jnp.where(valid, jnp.asarray(pos)[keep], 0)
  return Slots(modality=modality.astype(jnp.int32), position=position.astype(jnp.int32),
               valid=valid)


def gather(values: jax.Array, slots: Slots, index: int) -> jax.Array:
  """values (B, n, ...) of modality `index` at each slot (clipped elsewhere)."""
  pos = jnp.clip(slots.position, 0, values.shape[1] - 1)
  pos = pos.reshape(pos.shape + (1,) * (values.ndim - 2))
  return jnp.take_along_axis(values, pos, axis=1)


def sequence_positions(mask: jax.Array, limit: int | None = None) -> jax.Array:
  """Position of each selected token among the selected ones (0 elsewhere).

  As 4M counts sequence positions: cumsum(mask) - 1; positions >= limit
  (the decoder's maximum length) become 0.
  """
  pos = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1
  pos = jnp.where(mask, pos, 0)
  if limit is not None:
    pos = jnp.where(pos >= limit, 0, pos)
  return pos


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """(B, H, W, C) -> (B, (H/p)(W/p), p*p*C), patches row-major, (ph, pw, c) inside."""
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f"image size {h}x{w} is not divisible by the patch size {patch}.")
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)
