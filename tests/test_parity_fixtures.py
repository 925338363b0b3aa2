"""m4 reproduces reference 4M forward passes beyond ml4m_tiny's shapes.

Each tests/fixtures/ml4m_<name>/ holds a run of the reference PyTorch 4M
(apple/ml-4m FourM, random weights, float32; its README.md says what was run):
14x14 grids, unequal depths with 6 heads, padding slots in encoder and decoder
(and a target modality without targets), untied heads with unshared modality
embeddings, raw-pixel inputs. Every fixture is converted with
m4.models.convert and m4's logits and losses are compared per (modality,
source position) with the reference's.

Losses are compared to 1e-6 relative (absolute below 1; C.loss_tol, which
--check uses too): two float32 computations of a loss near 5-10 differ by a few
ulps (ulp 4.8e-7 at 5, 9.5e-7 at 8); the reference's own float32 losses are up
to 4.8e-7 from its float64 ones on these fixtures and move by 1.4e-6 between
CPUs (see the READMEs).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from m4 import modalities
from m4.models import convert as C
from tests.conftest import REPO

FIXTURES = ("ml4m_grid14", "ml4m_deep", "ml4m_padding", "ml4m_untied", "ml4m_pixels")


def _folder(name):
  return os.path.join(REPO, "tests", "fixtures", name)


def _load(name):
  folder = _folder(name)
  with open(os.path.join(folder, "config.json")) as f:
    ref_cfg = json.load(f)
  ref = dict(np.load(os.path.join(folder, "logits.npz")))
  inter = dict(np.load(os.path.join(folder, "intermediates.npz")))
  return folder, ref_cfg, ref, inter


@pytest.mark.parametrize("name", FIXTURES)
def test_matches_reference(name):
  folder, ref_cfg, ref, inter = _load(name)
  model, plan = C.convert_checkpoint(folder, suffix=f"_{name}")
  report = C.check(model, plan, folder)
  # Every decoder modality was compared, on the same target tokens.
  assert set(report["logits"]) == set(plan.cfg.decoder_modalities), report
  assert report["max_logit_diff"] <= C.LOGIT_TOL, report
  for ref_name, m4_name in plan.names.items():
    if m4_name in report["losses"]:
      want = ref[f"loss__{ref_name}"]
      assert report["losses"][m4_name] <= C.loss_tol(want), (m4_name, report)
  assert report["losses"]["total"] <= C.loss_tol(ref["loss"]), report
  assert report["ok"], report  # --check's verdict uses the same tolerances.

  # The encoder: same tokens in its slots, same outputs per token.
  inputs = dict(np.load(os.path.join(folder, "inputs.npz")))
  batch = C.reference_batch(inputs, plan)
  enc = nnx.jit(lambda m, b: m.encode(b, ref_cfg["num_encoder_tokens"]))(model, batch)
  out, slots = jax.device_get((enc.out, enc.slots))
  order = ref_cfg["mod_dict_order"]
  ref_valid = ~inter["encoder_mask"][:, 0]
  names = {i: plan.names[r] for i, r in enumerate(order) if r in plan.names}
  theirs = {(b, names[int(inter["enc_src_mod"][b, s])], int(inter["enc_src_pos"][b, s])):
            inter["encoder_out"][b, s] for b, s in zip(*np.nonzero(ref_valid))}
  mine = {(b, plan.cfg.encoder_modalities[int(slots.modality[b, s])],
           int(slots.position[b, s])): out[b, s] for b, s in zip(*np.nonzero(slots.valid))}
  assert mine.keys() == theirs.keys()
  worst = max(float(np.max(np.abs(mine[k] - theirs[k]))) for k in mine)
  assert worst <= C.LOGIT_TOL, worst


def test_fixtures_cover_what_they_claim():
  """Each fixture exercises the case it is named after."""
  _, grid14, _, _ = _load("ml4m_grid14")
  assert all(m["grid"] == [14, 14] for m in grid14["modalities"].values() if m["type"] == "img")
  _, deep, _, _ = _load("ml4m_deep")
  assert (deep["encoder_depth"], deep["decoder_depth"], deep["num_heads"]) == (4, 3, 6)

  _, pad, ref, inter = _load("ml4m_padding")
  enc_valid = (~inter["encoder_mask"][:, 0]).sum(1)
  dec_valid = ref["decoder_valid"].sum(1)
  assert np.all(enc_valid < pad["num_encoder_tokens"])
  assert np.all(dec_valid < pad["num_decoder_tokens"]) and dec_valid.min() == 0
  mods = np.asarray(pad["mod_dict_order"])
  per_sample = [set(mods[inter["dec_src_mod"][b][ref["decoder_valid"][b]]])
                for b in range(pad["batch"])]
  assert any(s == {"caption"} for s in per_sample)  # No image targets.
  assert any(s and "caption" not in s for s in per_sample)  # No caption target.
  # A target modality without targets adds 0 and still counts in the divisor.
  assert ref["loss__tok_semseg@224"] == 0.0
  losses = [ref[f"loss__{m}"] for m in pad["decoder_modalities"]]
  np.testing.assert_allclose(ref["loss"], np.sum(losses) / 4, rtol=1e-6)

  tensors, ref_cfg = C.read_source(_folder("ml4m_untied"))
  plan = C.plan(tensors, ref_cfg, suffix="_untied_plan")
  assert not plan.cfg.tie_heads and not plan.cfg.share_modality_embeddings

  tensors, ref_cfg = C.read_source(_folder("ml4m_pixels"))
  plan = C.plan(tensors, ref_cfg, suffix="_pixels_plan")
  kinds = {plan.specs[n].kind for n in plan.cfg.encoder_modalities}
  assert modalities.PIXELS in kinds and not plan.cfg.tie_heads


def test_unshared_modality_embeddings_are_not_silently_tied():
  """A config that claims shared modality embeddings is refused, naming the tensor."""
  tensors, ref_cfg = C.read_source(_folder("ml4m_untied"))
  ref_cfg = dict(ref_cfg, share_modality_embeddings=True)
  with pytest.raises(C.ConversionError, match=r"decoder_embeddings\..*\.mod_emb"):
    C.to_m4(tensors, C.plan(tensors, ref_cfg, suffix="_untied_shared"))


def test_cli_check():
  folder = _folder("ml4m_grid14")
  env = dict(os.environ, PYTHONPATH=REPO)
  run = subprocess.run([sys.executable, "-m", "m4.tools.convert_4m", f"--src={folder}",
                        f"--check={folder}"], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
  report = json.loads(run.stdout.strip().splitlines()[-1])
  assert report["ok"] and report["max_logit_diff"] <= C.LOGIT_TOL
  assert set(report["logits"]) == {"rgb@224", "depth@224", "semseg@224", "caption@4m"}
