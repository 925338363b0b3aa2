"""Released 4M DiVAE tokenizers: parity with reference runs, DDIM, the directory, errors.

The fixtures are runs of apple/ml-4m's own DiVAE and DDIMScheduler at random
weights (tests/fixtures/ml4m_tok_divae_*, ml4m_tok_ddim), made by
experiments/parity_4m/make_tokenizer_fixtures.py. Tolerances
(m4.tokenizers.released_convert): token ids equal; latents and codes 1e-5; one
UNet step and a short DDIM sampling 1e-4 absolute: the reference's own float32
runs are ~1e-6 from float64 (the fixtures' READMEs), so that leaves ~100x
headroom while a wrong weight, skip or coefficient moves them by ~1e-2 or more.
The schedule: 2e-6, the drift of the reference's float32 cumprod; DDIM steps
on their own: 1e-6 relative (one float32 update of values up to ~2.5e4).
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m4 import tokenizers
from m4.models.convert.source import ConversionError
from m4.tokenizers import released_convert as rc
from m4.tokenizers import released_ddim as ddim
from m4.tokenizers import released_tokenizer as rt
from tests.conftest import REPO
from tests.test_released_tokenizers import edited_copy

FIXTURES = os.path.join(REPO, "tests", "fixtures")


def fixture(name):
  return os.path.join(FIXTURES, name)


def nhwc(a):
  return np.moveaxis(a, 1, -1)


def test_rgb_parity_with_the_reference():
  """Tokens, codes, the UNet at t=500, and 3 DDIM steps (timesteps 999, 666, 333, 0)."""
  model, info = rc.convert(fixture("ml4m_tok_divae_rgb"))
  assert info.ignored_keys == [] and model.cfg.schedule().clip
  report = rc.check(model, fixture("ml4m_tok_divae_rgb"))
  assert report["token_mismatches"] == 0 and report["timesteps_equal"], report
  assert report["max_latent_diff"] <= rc.LATENT_TOL, report
  assert report["max_code_diff"] <= rc.CODE_TOL, report
  assert report["max_step_diff"] <= rc.STEP_TOL, report
  assert report["max_sample_diff"] <= rc.SAMPLE_TOL, report
  assert report["max_schedule_diff"] <= rc.SCHEDULE_TOL, report
  assert report["ok"]


def test_depth_directory_round_trip(tmp_path):
  """Convert, save, load by path; tokens and a 4-step sampling (v-prediction,
  shifted cosine, resized encoder positions) equal the reference's."""
  tok, _ = rt.from_reference(fixture("ml4m_tok_divae_depth"), modality="depth", image_size=16)
  out = str(tmp_path / "tok")
  tok.save(out)
  tok = tokenizers.load(out)
  assert isinstance(tok, rt.ReleasedTokenizer) and tok.diffusion
  assert (tok.grid, tok.vocab_size, tok.modality) == ((4, 4), 64, "depth")
  ref = np.load(os.path.join(fixture("ml4m_tok_divae_depth"), "reference.npz"))
  enc = nnx.jit(lambda m, x: m.encode(x))(tok.model, nhwc(ref["a__input"]))
  np.testing.assert_array_equal(enc.tokens, ref["a__tokens"])
  steps = int(ref["a__steps"])
  depth = tok.decode(ref["a__tokens"], steps=steps, noise=nhwc(ref["a__noise"]))
  np.testing.assert_allclose(depth, ref["a__sample"][:, 0], atol=rc.SAMPLE_TOL)
  seeded = tok.decode(ref["a__tokens"], steps=steps, seed=3)  # The same compiled sampler.
  assert seeded.shape == (2, 16, 16) and np.isfinite(seeded).all()
  np.testing.assert_array_equal(seeded, tok.decode(ref["a__tokens"], steps=steps, seed=3))
  assert not np.array_equal(seeded, depth)
  with pytest.raises(ValueError, match=r"noise must have shape \(2, 16, 16, 1\)"):
    tok.decode(ref["a__tokens"], steps=2, noise=np.zeros((2, 16, 16, 3)))
  with pytest.raises(ValueError, match="steps must be in"):
    tok.decode(ref["a__tokens"], steps=1001)


SCHEDULES = [("linear", True), ("linear", False), ("scaled_linear", True),
             ("squaredcos_cap_v2", False), ("squaredcos_cap_v2", True),
             ("shifted_cosine:0.5", True), ("shifted_cosine:2", True)]


def test_ddim_against_the_reference_scheduler():
  ref = np.load(os.path.join(fixture("ml4m_tok_ddim"), "ddim.npz"))
  for i, (beta, zts) in enumerate(SCHEDULES):
    got = ddim.alphas_cumprod(ddim.Schedule(1000, beta, "sample", True, zts))
    np.testing.assert_allclose(got, ref[f"schedule{i}"], atol=rc.SCHEDULE_TOL, err_msg=beta)
  for mode in ddim.MODES:
    for n in (1, 3, 7, 25, 50, 1000):
      np.testing.assert_array_equal(ddim.timesteps(1000, n, mode), ref[f"timesteps_{mode}_{n}"])
  x, out = nhwc(ref["step_x"]), nhwc(ref["step_model_output"])
  for pred in ddim.PREDICTIONS:
    for clip in (False, True):
      s = ddim.Schedule(1000, "squaredcos_cap_v2", pred, clip, False)
      c = ddim.coefficients(s, 7)
      for i in (0, -1):
        got = ddim.step(s, jnp.asarray(out), jnp.asarray(x), {k: v[i] for k, v in c.items()})
        want = nhwc(ref[f"step_{pred}_{int(clip)}_{int(c['t'][i])}"])
        assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max()), (pred, clip, i)


@pytest.mark.parametrize("config, match", [
    (lambda c: c.update(dec_type="uvit_b"), r"config.json: dec_type 'uvit_b' is not a DiVAE"),
    (lambda c: c.update(dec_type="unet_p2_c32_r1_m1-1_a2"), r"decoder.input_blocks.1.0"),
    (lambda c: c.update(n_labels=10), r"a DiVAE with n_labels 10"),
    (lambda c: c.update(prediction_type="x0"), r"prediction_type 'x0'"),
    (lambda c: c.update(beta_schedule="sigmoid"), r"beta_schedule 'sigmoid'"),
    (lambda c: c.update(conditioning="xattn", foo=1), r"unknown config keys \['foo'\].*DiVAE"),
])
def test_bad_divae_sources_are_named(tmp_path, config, match):
  with pytest.raises(ConversionError, match=match):
    rc.convert(edited_copy(tmp_path, edit_config=config, name="ml4m_tok_divae_rgb"))


def test_modality_must_fit():
  with pytest.raises(ConversionError, match="'mask' does not fit"):
    rt.from_reference(fixture("ml4m_tok_divae_depth"), modality="mask")
