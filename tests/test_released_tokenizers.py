"""Released 4M VQ-VAE tokenizers: parity with reference runs, the directory, errors.

The fixtures (tests/fixtures/ml4m_tok_*) are runs of apple/ml-4m's own VQVAE at
random weights, made by experiments/parity_4m/make_tokenizer_fixtures.py.
Tolerances (m4.tokenizers.released_convert): token ids equal; latents and codes
1e-5, reconstructions 1e-4 absolute. The reference's own float32 runs are about
1e-6 from float64 (the fixtures' READMEs), so that is the size of rounding two
correct float32 implementations disagree by; the bounds leave ~10x headroom and
catch any wrong weight (perturbed ~0.02 off their initial values).
"""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from m4 import tokenizers
from m4.models.convert.source import ConversionError
from m4.tokenizers import released_convert as rc
from m4.tokenizers import released_tokenizer as rt
from tests.conftest import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures")
# The runs checked here (`--check` runs them all): semseg's "a" (224-like, resized
# positions) is checked through the tokenizer in test_semseg_directory_round_trip;
# clip's "c" is at its native grid, as semseg's "b" is.
RUNS = {"ml4m_tok_semseg": ["b"], "ml4m_tok_clip": ["a", "b"], "ml4m_tok_global": ["a"],
        "ml4m_tok_sam": ["a"]}


def fixture(name):
  return os.path.join(FIXTURES, name)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_parity_with_the_reference(name):
  model, info = rc.convert(fixture(name))
  assert info.ignored_keys == []
  report = rc.check(model, fixture(name), RUNS[name])
  assert report["token_mismatches"] == 0, report
  assert report["max_latent_diff"] <= rc.LATENT_TOL, report
  assert report["max_code_diff"] <= rc.CODE_TOL, report
  assert report["max_reconstruction_diff"] <= rc.RECON_TOL, report
  assert report["ok"]


def test_semseg_directory_round_trip(tmp_path):
  """Convert, save, load by path; raw COCO ids (255 unlabelled) in, ids out."""
  tok, _ = rt.from_reference(fixture("ml4m_tok_semseg"), image_size=16)
  out = str(tmp_path / "tok")
  tok.save(out)
  with pytest.raises(FileExistsError, match="not overwriting"):
    tok.save(out)
  tok = tokenizers.load(out)
  assert isinstance(tok, rt.ReleasedTokenizer)
  assert (tok.grid, tok.vocab_size, tok.modality) == ((4, 4), 64, "semseg")
  ref = np.load(os.path.join(fixture("ml4m_tok_semseg"), "reference.npz"))
  ids_4m = ref["a__input"]  # The ids the reference read: COCO id + 1, 0 = no class.
  raw = np.where(ids_4m == 0, 255, ids_4m - 1)
  tokens = tok.encode(raw)
  np.testing.assert_array_equal(tokens, ref["a__tokens"])
  ids, logits = tok.decode(tokens, return_logits=True)
  want = np.moveaxis(ref["a__reconstruction"], 1, -1)
  np.testing.assert_allclose(logits, want, atol=rc.RECON_TOL)
  np.testing.assert_array_equal(ids, rt.semseg_from_4m(want))
  with pytest.raises(ValueError, match=r"class ids must be in \[0, 9\) or 255"):
    tok.encode(np.full((1, 16, 16), 9))
  with pytest.raises(ValueError, match="multiple of the patch size 4"):
    tok.encode(np.zeros((1, 18, 16), np.int32))
  with pytest.raises(ValueError, match=r"token ids must be in \[0, 64\)"):
    tok.decode(np.full((1, 4, 4), 64))


def test_input_processing_matches_the_reference():
  io = np.load(os.path.join(fixture("ml4m_tok_io"), "io.npz"))
  np.testing.assert_allclose(rt.standardize_depth(io["depth"]), io["depth_standardized"],
                             atol=1e-5)
  np.testing.assert_array_equal(rt.semseg_to_4m(io["semseg"]), io["semseg_shifted"])


def test_global_features_as_vectors():
  """A 1x1 (MLP) tokenizer: (B, D) features in, (B, n_codebooks) tokens out."""
  tok, _ = rt.from_reference(fixture("ml4m_tok_global"))
  assert (tok.modality, tok.grid) == ("feature", (4,))
  ref = np.load(os.path.join(fixture("ml4m_tok_global"), "reference.npz"))
  tokens = tok.encode(ref["a__input"][:, :, 0, 0])
  np.testing.assert_array_equal(tokens, ref["a__tokens"][:, :, 0, 0])
  np.testing.assert_allclose(tok.decode(tokens), ref["a__reconstruction"][:, :, 0, 0],
                             atol=rc.RECON_TOL)


def edited_copy(tmp_path, edit_tensors=None, edit_config=None, name="ml4m_tok_semseg"):
  """A copy of fixture `name` in tmp_path with its tensors and config.json edited."""
  src = str(tmp_path / "src")
  shutil.copytree(fixture(name), src)
  path = os.path.join(src, "model.safetensors")
  if edit_tensors:
    tensors = load_file(path)
    edit_tensors(tensors)
    save_file(tensors, path)
  if edit_config:
    with open(os.path.join(src, "config.json")) as f:
      cfg = json.load(f)
    edit_config(cfg)
    with open(os.path.join(src, "config.json"), "w") as f:
      json.dump(cfg, f)
  return src


QKV = "encoder.blocks.1.attn.qkv.weight"


@pytest.mark.parametrize("tensors, config, match", [
    (lambda t: t.pop(QKV), None, rf"model.safetensors: tensor '{QKV}' is missing"),
    (lambda t: t.update({QKV: np.zeros((72, 8), np.float32)}), None,
     rf"'{QKV}' has shape \(72, 8\).*needs \(72, 24\)"),
    (lambda t: t.update({"encoder.extra.weight": np.zeros(3, np.float32)}), None,
     r"does not account for, e.g. \['encoder.extra.weight'\]"),
    (lambda t: t["quant_proj.bias"].__setitem__(0, np.nan), None,
     r"model.safetensors: tensor 'quant_proj.bias' holds 1 NaN"),
    (None, lambda c: c.update(n_layers=3), r"config.json: unknown config keys \['n_layers'\]"),
    (None, lambda c: c.update(enc_type="vit_q_enc"), r"config.json: enc_type 'vit_q_enc'"),
    (None, lambda c: c.update(beta_schedule="linear"), r"config.json: a DiVAE"),
    (None, lambda c: c.update(norm_codes=False), r"'norm_codes' is False"),
])
def test_bad_sources_are_named(tmp_path, tensors, config, match):
  src = edited_copy(tmp_path, tensors, config)
  with pytest.raises(ConversionError, match=match):
    rc.convert(src)


def test_unknown_keys_can_be_ignored(tmp_path):
  src = edited_copy(tmp_path, edit_config=lambda c: c.update(domain="semseg_coco"))
  with pytest.raises(ConversionError, match=r"unknown config keys \['domain'\]"):
    rc.convert(src)
  model, info = rc.convert(src, allow_unknown_keys=True)
  assert info.ignored_keys == ["domain"] and model.cfg.n_labels == 10


def test_modality_must_fit():
  with pytest.raises(ConversionError, match="say which modality"):
    rt.from_reference(fixture("ml4m_tok_sam"))
  with pytest.raises(ConversionError, match="'rgb' does not fit"):
    rt.from_reference(fixture("ml4m_tok_sam"), modality="rgb")
