"""The reference 4M checkpoint converter: parity with the fixture, and errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from m4.models import convert as C
from tests.conftest import REPO

FIXTURE = os.path.join(REPO, "tests", "fixtures", "ml4m_tiny")


@pytest.fixture(scope="module")
def source():
  return C.read_source(FIXTURE)


@pytest.fixture(scope="module")
def converted():
  return C.convert_checkpoint(FIXTURE)


def test_fixture_parity(converted):
  model, plan = converted
  report = C.check(model, plan, FIXTURE)
  assert report["max_logit_diff"] <= C.LOGIT_TOL, report
  assert report["max_loss_rel_diff"] <= C.LOSS_TOL, report  # 1e-6 * max(1, |loss|).
  assert set(report["logits"]) == {"rgb@64", "depth@64", "semseg@64", "caption@4m"}
  assert report["ok"]


def test_names_and_config(converted):
  model, plan = converted
  assert plan.names == {"tok_rgb@224": "rgb@64", "tok_depth@224": "depth@64",
                        "tok_semseg@224": "semseg@64", "caption": "caption@4m"}
  cfg = model.cfg
  assert (cfg.dim, cfg.encoder_depth, cfg.decoder_depth, cfg.num_heads) == (64, 2, 2, 4)
  assert cfg.mlp_hidden == 170 and cfg.tie_heads and not cfg.norm_bias and not cfg.qkv_bias
  assert plan.specs["caption@4m"].vocab_size == 4400
  assert plan.specs["rgb@64"].grid == (4, 4)


@pytest.mark.parametrize("name", ["ml4m_tiny", "ml4m_untied", "ml4m_pixels"])
def test_round_trip_to_reference_is_exact(name):
  tensors, ref_cfg = C.read_source(os.path.join(REPO, "tests", "fixtures", name))
  plan = C.plan(tensors, ref_cfg, suffix=f"_{name}_rt")
  back = C.to_reference(C.to_m4(tensors, plan), plan)
  assert set(back) == set(tensors)
  for k, v in tensors.items():
    if k.endswith("pos_emb"):  # Recomputed buffers: equal up to float32 rounding.
      np.testing.assert_allclose(back[k], v, atol=C.BUFFER_ATOL)
    else:
      np.testing.assert_array_equal(back[k], v, err_msg=k)


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.pop("encoder.1.mlp.fc3.weight"), "encoder.1.mlp.fc3.weight"),
    (lambda t: t.update({"decoder.0.cross_attn.kv.weight": np.zeros((64, 64), np.float32)}),
     r"decoder.0.cross_attn.kv.weight.*\(64, 64\).*\(128, 64\)"),
    (lambda t: t.update({"decoder_embeddings.caption.to_logits.weight": np.zeros(
        (4400, 64), np.float32)}), "tied|ties all heads"),
    (lambda t: t.update({"encoder.0.norm1.bias": np.ones(64, np.float32)}),
     "encoder.0.norm1.bias"),
    (lambda t: t.update({"encoder_embeddings.tok_rgb@224.pos_emb": np.zeros(
        (1, 16, 64), np.float32)}), "tok_rgb@224.pos_emb"),
    (lambda t: t.update({"encoder.0.attn.extra.weight": np.zeros(3, np.float32)}),
     "encoder.0.attn.extra.weight"),
])
def test_bad_tensors_are_named(source, edit, match):
  tensors, ref_cfg = source
  tensors = dict(tensors)
  edit(tensors)
  with pytest.raises(C.ConversionError, match=match):
    C.to_m4(tensors, C.plan(tensors, ref_cfg))


def test_unknown_modalities_listed_or_skipped(source):
  tensors, ref_cfg = source
  tensors = dict(tensors)
  tensors["encoder_embeddings.t5_caption.emb_proj.weight"] = np.zeros((64, 32), np.float32)
  tensors["encoder_embeddings.t5_caption.mod_emb"] = np.zeros((1, 1, 64), np.float32)
  with pytest.raises(C.ConversionError, match=r"\['t5_caption'\].*--skip_unknown"):
    C.plan(tensors, ref_cfg)
  plan = C.plan(tensors, ref_cfg, skip_unknown=True)
  assert plan.skipped == ["t5_caption"] and "t5_caption" not in plan.names
  C.to_m4(tensors, plan)  # The skipped modality's tensors are not "unused".


def test_cli_writes_a_loadable_model_and_checks(tmp_path, converted):
  out = tmp_path / "m4_tiny"
  env = dict(os.environ, PYTHONPATH=REPO)
  run = subprocess.run([sys.executable, "-m", "m4.tools.convert_4m", f"--src={FIXTURE}",
                        f"--out={out}", f"--check={FIXTURE}"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  assert '"ok": true' in run.stdout.strip().splitlines()[-1]
  from m4.models import pretrained  # pylint: disable=g-import-not-at-top
  loaded = pretrained.load(str(out))
  model, _ = converted
  want = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  got = nnx.to_pure_dict(nnx.state(loaded, nnx.Param))
  import jax  # pylint: disable=g-import-not-at-top
  jax.tree.map(np.testing.assert_array_equal, want, got)
  # Never overwrites: a second conversion into the same directory fails.
  again = subprocess.run([sys.executable, "-m", "m4.tools.convert_4m", f"--src={FIXTURE}",
                          f"--out={out}"], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 2 and "already exists" in again.stderr


def test_released_style_config_gives_the_same_plan(source):
  """A config as 4M's released checkpoints have (no per-modality details)."""
  tensors, ref_cfg = source
  released = dict(num_heads=4, mlp_ratio=4.0, act_layer="SiLU", gated_mlp=True, norm_bias=False,
                  patch_size=16, image_size=64,
                  domains_in=["tok_rgb@224", "tok_depth@224", "tok_semseg@224", "caption"],
                  domains_out=["tok_rgb@224", "tok_depth@224", "tok_semseg@224", "caption"])
  want, got = C.plan(tensors, ref_cfg), C.plan(tensors, released)
  assert got.names == want.names and got.specs == want.specs
  assert got.cfg.replace(num_encoder_tokens=24, num_decoder_tokens=24) == want.cfg
