"""Compares m4 with a reference 4M run saved in the fixture format.

A run is a folder with inputs.npz, logits.npz, intermediates.npz and
config.json (see tests/fixtures/ml4m_tiny/README.md).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from m4 import modalities
from m4.models.convert.planning import ConversionError, Plan

LOGIT_TOL = 1e-5  # Absolute, on every logit.
LOSS_TOL = 1e-6  # Relative, absolute below 1: see loss_tol.


def loss_tol(reference_loss) -> float:
  """The tolerance of a loss: LOSS_TOL * max(1, |reference_loss|).

  Two float32 computations of a loss near 5-10 differ by a few ulps (ulp 4.8e-7
  at 5, 9.5e-7 at 8); the reference's own float32 losses move by 1.4e-6
  between CPUs (tests/fixtures/*/README.md). An absolute 1e-6 would test that
  rounding.
  """
  return LOSS_TOL * _loss_scale(reference_loss)


def _loss_scale(reference_loss) -> float:
  return max(1.0, abs(float(reference_loss)))


def reference_batch(inputs: dict[str, np.ndarray], p: Plan) -> dict:
  """A batch in the reference's convention (masks True = not selected) in m4's."""
  batch = {}
  for r, name in p.names.items():
    if f"{r}__tensor" not in inputs:
      continue
    t = inputs[f"{r}__tensor"]
    spec = p.specs[name]
    if spec.kind != modalities.PIXELS:
      t = t.reshape(t.shape[0], -1).astype(np.int32)
    else:  # (B, C, H, W) -> (B, H, W, C)
      t = np.transpose(t, (0, 2, 3, 1)).astype(np.float32)
    d = {"tensor": t}
    for key in ("input_mask", "target_mask"):
      if f"{r}__{key}" in inputs:
        d[key] = ~inputs[f"{r}__{key}"].astype(bool)
    dam = inputs.get(f"{r}__decoder_attention_mask")
    d["decoder_attention_mask"] = (np.zeros(d["input_mask"].shape, np.int32) if dam is None
                                   else dam.astype(np.int32))
    d.setdefault("target_mask", np.zeros(d["input_mask"].shape, bool))
    batch[name] = d
  return batch


def check(model, p: Plan, folder: str) -> dict:
  """Largest differences between m4 and a reference run saved in `folder`.

  Returns {"logits": {name: max abs diff}, "losses": {name or "total": abs
  diff}, "max_logit_diff", "max_loss_diff", "max_loss_rel_diff" (diff /
  max(1, |reference loss|)), "ok"}: ok when max_logit_diff <= LOGIT_TOL and
  every loss is within loss_tol of the reference's.
  """
  with open(os.path.join(folder, "config.json")) as f:
    ref_cfg = json.load(f)
  inputs = dict(np.load(os.path.join(folder, "inputs.npz")))
  ref = dict(np.load(os.path.join(folder, "logits.npz")))
  batch = reference_batch(inputs, p)
  n_enc = int(ref_cfg["num_encoder_tokens"])
  n_dec = int(ref_cfg["num_decoder_tokens"])
  mod_ids = {r: info["id"] for r, info in ref_cfg["modalities"].items()}

  @nnx.jit(static_argnums=(2, 3))
  def forward(model, batch, n_enc, n_dec):
    enc = model.encode(batch, n_enc)
    dec = model.decode(batch, enc, n_dec)
    loss, metrics = model.loss(batch, dec)
    logits = {n: model.logits(dec.out, n) for n in model.cfg.decoder_modalities if n in batch}
    return logits, dec.slots, loss, metrics

  logits, slots, loss, metrics = jax.device_get(forward(model, batch, n_enc, n_dec))
  report = {"logits": {}, "losses": {}}
  scaled = []  # Loss diffs / max(1, |reference loss|).
  ref_mod = ref["decoder_mod_mask"]
  src_pos = np.load(os.path.join(folder, "intermediates.npz"))["dec_src_pos"]
  for r, name in p.names.items():
    if name not in logits:
      continue
    j = model.cfg.decoder_modalities.index(name)
    mine = _by_position(logits[name], slots.modality == j, slots.position, slots.valid)
    theirs = _by_position(ref[r], ref_mod == mod_ids[r], src_pos, ref["decoder_valid"])
    if set(mine) != set(theirs):
      raise ConversionError(f"{name}: m4 decodes {len(mine)} target tokens, the reference "
                            f"{len(theirs)}; the token selection differs.")
    diffs = [float(np.max(np.abs(mine[k] - theirs[k]))) for k in mine]
    report["logits"][name] = max(diffs) if diffs else 0.0
    report["losses"][name] = abs(float(metrics[f"loss/{name}"]) - float(ref[f"loss__{r}"]))
    scaled.append(report["losses"][name] / _loss_scale(ref[f"loss__{r}"]))
  report["losses"]["total"] = abs(float(loss) - float(ref["loss"]))
  scaled.append(report["losses"]["total"] / _loss_scale(ref["loss"]))
  report["max_logit_diff"] = max(report["logits"].values())
  report["max_loss_diff"] = max(report["losses"].values())
  report["max_loss_rel_diff"] = max(scaled)
  report["ok"] = (report["max_logit_diff"] <= LOGIT_TOL
                  and report["max_loss_rel_diff"] <= LOSS_TOL)
  return report


def _by_position(values, is_mod, position, valid) -> dict:
  """{(sample, source position): value} of the valid slots of one modality."""
  out = {}
  b_idx, s_idx = np.nonzero(np.asarray(is_mod) & np.asarray(valid))
  for b, s in zip(b_idx, s_idx):
    out[(int(b), int(position[b, s]))] = values[b, s]
  return out

