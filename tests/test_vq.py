"""VQ tokenizers: the quantizer, the models, training, loading, bad inputs."""

import json
import os
import re
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import m4  # pylint: disable=unused-import
from m4 import modalities
from m4 import sharding
from m4 import tokenizers
from m4 import workdir as workdir_lib
from m4.data import scenes
from m4.tokenizers import quantizer as quantizer_lib
from m4.tokenizers import vq_tokenizer
from m4.jobs import tokenizer as tokenizer_trainer
from tests.conftest import REPO

NUM_CLASSES = len(scenes.CLASSES)
TINY_MODEL = dict(channels=(16, 32), num_res_blocks=1, code_dim=8, patch=4)


def _quantizer(num_codes=8, dim=4, **kw):
  return quantizer_lib.VectorQuantizer(num_codes, dim, rngs=nnx.Rngs(0), **kw)


def _set_codes(vq, codes, counts):
  codes = quantizer_lib.l2_normalize(jnp.asarray(codes, jnp.float32))
  vq.codebook.set_value(codes)
  vq.ema_sum.set_value(codes * jnp.asarray(counts, jnp.float32)[:, None])
  vq.ema_count.set_value(jnp.asarray(counts, jnp.float32))


# ---------------------------------------------------------------- quantizer


def test_straight_through_gradient():
  vq = _quantizer()
  z = jax.random.normal(jax.random.key(1), (5, 4))
  w = jax.random.normal(jax.random.key(2), (5, 4))
  out = vq(z)
  np.testing.assert_allclose(out.quantized, vq.lookup(out.indices), atol=1e-6)
  grad_st = jax.grad(lambda z: jnp.sum(w * vq(z).quantized))(z)
  grad_id = jax.grad(lambda z: jnp.sum(w * quantizer_lib.l2_normalize(z)))(z)
  np.testing.assert_allclose(grad_st, grad_id, atol=1e-6)
  assert np.abs(grad_st).sum() > 0
  # The commitment loss pulls the encoder output towards its (frozen) code.
  grad_c = jax.grad(lambda z: vq(z).commitment)(z)
  z2 = quantizer_lib.l2_normalize(z - 0.1 * grad_c)
  before = jnp.sum(quantizer_lib.l2_normalize(z) * out.quantized, -1)
  after = jnp.sum(z2 * vq.lookup(out.indices), -1)
  assert np.all(after >= before - 1e-6) and np.any(after > before)


def test_nearest_is_by_cosine():
  vq = _quantizer(num_codes=4, dim=2)
  _set_codes(vq, [[1, 0], [0, 1], [-1, 0], [0, -1]], [1, 1, 1, 1])
  z = jnp.array([[10.0, 1.0], [0.1, 3.0], [-0.5, -0.1], [0.2, -9.0]])
  np.testing.assert_array_equal(vq(z).indices, [0, 1, 2, 3])


def test_ema_moves_codes_towards_assigned_vectors():
  vq = _quantizer(num_codes=4, dim=2, decay=0.9)
  _set_codes(vq, [[1, 0], [0, 1], [-1, 0], [0, -1]], [5, 5, 5, 5])
  target = quantizer_lib.l2_normalize(jnp.array([1.0, 0.5]))
  z = jnp.tile(target, (16, 1))
  out = vq(z)
  assert np.all(out.indices == 0)
  old = np.asarray(vq.codebook.get_value())
  restarted = vq.ema_update(out.normalized, out.indices, jax.random.key(0))
  new = np.asarray(vq.codebook.get_value())
  assert int(restarted) == 0
  assert float(new[0] @ target) > float(old[0] @ target) + 1e-3
  np.testing.assert_allclose(new[1:], old[1:], atol=1e-6)  # Unassigned codes keep direction.
  np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, atol=1e-5)
  for _ in range(200):  # Converges onto the assigned vector.
    vq.ema_update(out.normalized, out.indices, jax.random.key(0))
  np.testing.assert_allclose(vq.codebook.get_value()[0], target, atol=1e-3)


def test_dead_codes_are_restarted_from_encoder_outputs():
  vq = _quantizer(num_codes=6, dim=3, dead_threshold=0.5, restart_noise=0.0)
  counts = [4.0, 4.0, 4.0, 0.1, 0.0, 0.2]  # Codes 3, 4, 5 are dead.
  _set_codes(vq, np.eye(6, 3) + 0.01, counts)
  z = quantizer_lib.l2_normalize(jax.random.normal(jax.random.key(3), (32, 3)))
  out = vq(z)
  old = np.asarray(vq.codebook.get_value())
  restarted = vq.ema_update(out.normalized, out.indices, jax.random.key(4))
  new = np.asarray(vq.codebook.get_value())
  assert int(restarted) == 3
  # Each restarted code is one of the batch's outputs; the live ones are not moved there.
  sims = new[3:] @ np.asarray(z).T
  np.testing.assert_allclose(sims.max(axis=1), 1.0, atol=1e-5)
  assert not np.allclose(new[3:], old[3:])
  assert np.all(np.asarray(vq.ema_count.get_value())[3:] >= 0.5)
  # The averages start at 0: the first update puts every code on data, the
  # mean direction of its assigned outputs or (unassigned) one output.
  fresh = _quantizer(num_codes=6, dim=3, restart_noise=0.0)
  out = fresh(z)
  fresh.ema_update(out.normalized, out.indices, jax.random.key(5))
  codes = np.asarray(fresh.codebook.get_value())
  for k in range(6):
    assigned = np.asarray(z)[np.asarray(out.indices) == k]
    if len(assigned):
      mean = assigned.sum(0) / np.linalg.norm(assigned.sum(0))
      np.testing.assert_allclose(codes[k], mean, atol=1e-5)
    else:
      assert (codes[k] @ np.asarray(z).T).max() == pytest.approx(1.0, abs=1e-5)


def test_usage_and_perplexity_on_a_known_assignment():
  counts = quantizer_lib.assignment_counts(jnp.array([0, 0, 1, 1, 2, 2, 3, 3]), 8)
  stats = quantizer_lib.code_statistics(counts)
  assert float(stats["codebook_usage"]) == pytest.approx(0.5)
  assert float(stats["perplexity"]) == pytest.approx(4.0, rel=1e-5)
  stats = quantizer_lib.code_statistics(quantizer_lib.assignment_counts(jnp.zeros(10, jnp.int32), 8))
  assert float(stats["codebook_usage"]) == pytest.approx(1 / 8)
  assert float(stats["perplexity"]) == pytest.approx(1.0)
  p = np.array([0.5, 0.25, 0.25, 0, 0, 0, 0, 0])
  stats = quantizer_lib.code_statistics(jnp.asarray(p * 400))
  assert float(stats["perplexity"]) == pytest.approx(np.exp(-(p[:3] * np.log(p[:3])).sum()), rel=1e-5)


# ---------------------------------------------------------------- tokenizers


def _spec(name, **model):
  io = {"loss_weights": {}}
  if name == "semseg":
    io["num_classes"] = NUM_CLASSES
  return vq_tokenizer.TokenizerSpec(
      modality=modalities.get(name).to_dict(), image_size=(64, 64),
      model=dict(TINY_MODEL, **model), io=io)


def _untrained(name, seed=0):
  spec = _spec(name)
  model, io = vq_tokenizer.build(spec, nnx.Rngs(seed))
  return vq_tokenizer.VQTokenizer(model, io, spec)


def _samples(n=4):
  out = [scenes.render(i, seed=0, split="validation") for i in range(n)]
  return {k: np.stack([s[k] for s in out]) for k in ("rgb", "depth", "semseg")}


def test_encode_decode_shapes_and_dtypes():
  data = _samples(3)
  for name in ("rgb", "depth", "semseg"):
    tok = _untrained(name)
    tokens = tok.encode(data[name])
    assert tokens.shape == (3, 8, 8) and tokens.dtype == jnp.int32
    assert 0 <= int(tokens.min()) and int(tokens.max()) < modalities.get(name).vocab_size
    images = tok.decode(tokens)
    want = {"rgb": ((3, 64, 64, 3), jnp.float32), "depth": ((3, 64, 64), jnp.float32),
            "semseg": ((3, 64, 64), jnp.int32)}[name]
    assert (images.shape, images.dtype) == want
    if name == "rgb":
      assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    if name == "depth":
      assert float(images.min()) >= 0.0
    if name == "semseg":
      ids, logits = tok.decode(tokens, return_logits=True)
      assert logits.shape == (3, 64, 64, NUM_CLASSES)
      np.testing.assert_array_equal(ids, jnp.argmax(logits, -1))
      assert 0 <= int(ids.min()) and int(ids.max()) < NUM_CLASSES
    if name == "rgb":  # uint8 and float rgb give the same tokens.
      np.testing.assert_array_equal(tokens, tok.encode(data["rgb"] / np.float32(255)))


def test_a_batch_split_over_the_devices_gives_the_single_device_tokens():
  """encode() splits a batch that divides over the 8 test devices; the tokens are
  those of the one-device call (encode_traced) but for near-ties, which float
  rounding may flip (1 in 128,000 of the main job's tokens); an odd batch
  stays whole, on one device, and gives exactly the one-device call's tokens."""
  data = _samples(8)
  for name in ("rgb", "semseg"):
    tok = _untrained(name)
    one = jax.jit(tok.encode_traced)(tok.check(data[name]))
    spread = tok.encode(data[name])
    assert len(jax.devices()) == 8 and tok._spread_state is not None  # pylint: disable=protected-access
    assert np.mean(np.asarray(spread) == np.asarray(one)) >= 0.99
    np.testing.assert_array_equal(tok.encode(data[name][:3]), one[:3])


def test_save_load_round_trip_gives_identical_tokens(tmp_path, monkeypatch):
  data = _samples(4)
  tok = _untrained("semseg", seed=3)
  path = str(tmp_path / "store" / "vq_semseg")
  tok.save(path, step=7)
  with pytest.raises(FileExistsError, match="not overwriting"):
    tok.save(path)
  monkeypatch.setenv(tokenizers.ENV_VAR, str(tmp_path / "store"))
  assert tokenizers.available() == {"vq_semseg": path}
  for loaded in (tokenizers.load(path), tokenizers.load("vq_semseg")):
    np.testing.assert_array_equal(loaded.encode(data["semseg"]), tok.encode(data["semseg"]))
    tokens = tok.encode(data["semseg"])
    np.testing.assert_array_equal(loaded.decode(tokens), tok.decode(tokens))
  with pytest.raises(FileNotFoundError, match=r"unknown tokenizer 'vq_nope'.*available: \['vq_semseg'\]"):
    tokenizers.load("vq_nope")
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    tokenizers.load(str(tmp_path))
  # What jobs call: errors of the config field, naming the path.
  assert tokenizers.load_for_modality("semseg", "vq_semseg").grid == tok.grid
  with pytest.raises(workdir_lib.ConfigError,
                     match=r"config.tokenizers.semseg: unknown tokenizer 'vq_nope'"):
    tokenizers.load_for_modality("semseg", "vq_nope")
  with pytest.raises(workdir_lib.ConfigError, match=r"config.tokenize: .*no tokenizer.json"):
    tokenizers.load_for_modality("semseg", str(tmp_path), field="tokenize")
  other = dict(modalities.get("semseg").to_dict(), name="semseg@vqtest",
               vocab_size=tok.vocab_size * 2)
  modalities.register_from_config({"semseg@vqtest": other})
  with pytest.raises(workdir_lib.ConfigError,
                     match=rf"config.tokenizers.semseg@vqtest: {re.escape(path)} has grid .* the registry's"):
    tokenizers.load_for_modality("semseg@vqtest", path)


def test_bad_inputs_raise_clear_errors():
  data = _samples(2)
  rgb, depth, semseg = _untrained("rgb"), _untrained("depth"), _untrained("semseg")
  with pytest.raises(ValueError, match=r"rgb: expected 3 channels.*got 4"):
    rgb.encode(np.zeros((2, 64, 64, 4), np.uint8))
  with pytest.raises(ValueError, match=r"rgb: expected a batch of shape \(B, H, W, 3\)"):
    rgb.encode(data["rgb"][0])
  with pytest.raises(ValueError, match=r"rgb: float values must be finite and in \[0, 1\]"):
    rgb.encode(data["rgb"].astype(np.float32))  # 0..255 floats.
  with pytest.raises(ValueError, match=r"rgb: images must be \(64, 64\) pixels"):
    rgb.encode(np.zeros((2, 32, 32, 3), np.uint8))
  bad = data["depth"].copy()
  bad[0, 3, 4] = np.nan
  with pytest.raises(ValueError, match=r"depth: depth must be finite.*nan at \(0, 3, 4\)"):
    depth.encode(bad)
  bad[0, 3, 4] = -1.0
  with pytest.raises(ValueError, match=r"depth: .*>= 0 metres.*-1.0 at \(0, 3, 4\)"):
    depth.encode(bad)
  bad = data["semseg"].astype(np.int32)
  bad[1, 0, 0] = NUM_CLASSES
  with pytest.raises(ValueError, match=rf"semseg: class ids must be in \[0, {NUM_CLASSES}\) or 255"):
    semseg.encode(bad)
  bad[1, 0, 0] = 255  # Unlabelled is a documented mask, not an error.
  assert semseg.encode(bad).shape == (2, 8, 8)
  with pytest.raises(ValueError, match="semseg: expected integer class ids"):
    semseg.encode(bad.astype(np.float32))
  with pytest.raises(ValueError, match=r"semseg: token ids must be in \[0, 512\)"):
    semseg.decode(np.full((1, 8, 8), 512))
  with pytest.raises(ValueError, match=r"depth: tokens must have shape \(B, 8, 8\)"):
    depth.decode(np.zeros((1, 4, 4), np.int32))


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("scenes"))
  cfg = scenes.default_config()
  cfg.update(num_train=256, num_validation=64, num_test=8)
  scenes.ensure(path, cfg, progress=False)
  return path


@pytest.fixture(scope="module")
def geometry_dir(tmp_path_factory):
  """Scenes with normals and edges (m4.data.scene_extras)."""
  path = str(tmp_path_factory.mktemp("geometry"))
  cfg = scenes.default_config()
  cfg.update(num_train=256, num_validation=64, num_test=8, extras=("normals", "edges"))
  scenes.ensure(path, cfg, progress=False)
  return path


def _config(modality, data_dir, num_steps):
  """configs/tokenizers/<modality>_scenes.py on `data_dir`, with a tiny model."""
  c = runpy.run_path(f"{REPO}/configs/tokenizers/{modality}_scenes.py")["get_config"]()
  c.data.dir = data_dir
  c.data.update(num_train=256, num_validation=64, num_test=8)
  c.data.batch_size = 16
  c.model.update(TINY_MODEL)
  c.model.dead_threshold = 0.01
  if modality == "semseg":
    c.io.num_classes = NUM_CLASSES
  c.optimizer.update(learning_rate=3e-3, warmup_steps=5)
  c.num_steps = num_steps
  c.log_every = 10
  c.checkpoint_every = 40
  c.eval.update(batch_size=32, grid_rows=2)
  return c


def test_sharded_train_step_equals_unsharded(scenes_dir):
  config = _config("depth", scenes_dir, 10)
  # Restarts pick outputs at random with weights from float sums, so a
  # near-tie may pick differently on another mesh; they are tested above.
  config.model.dead_threshold = 0.0
  x = _samples(8)["depth"]
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    mesh = sharding.make_mesh({"data": -1}, devices)
    trainer = tokenizer_trainer.Trainer(config, mesh)
    state, metrics = trainer.initial, []
    for _ in range(2):
      state, m = trainer.train_step(state, sharding.to_global(x, mesh))
      metrics.append(jax.device_get(m))
    results.append((jax.device_get(state.params), jax.device_get(state.extra["codebook"]),
                    metrics))
  (p1, c1, m1), (p8, c8, m8) = results
  for a, b in zip(m1, m8):
    assert int(a["codes_restarted"]) == int(b["codes_restarted"]) == 0
    for k in ("loss", "grad_norm", "commitment", "batch_perplexity"):
      assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-4), k
  # Adam normalises each gradient entry, so entries whose gradient is ~0 may
  # differ by a fraction of a step (lr 3e-3) in float32; the rest agree closely.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3), p1, p8)
  assert np.mean([np.mean(np.abs(a - b) < 1e-5) for a, b in
                  zip(jax.tree.leaves(p1), jax.tree.leaves(p8))]) > 0.99
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), c1, c8)


def test_tiny_rgb_tokenizer_learns_and_resumes(scenes_dir, tmp_path):
  workdir = str(tmp_path / "vq_rgb")
  summary = tokenizer_trainer.run(_config("rgb", scenes_dir, 80), workdir)
  assert summary["steps"] == 80 and os.path.exists(summary["grid"])
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["num_samples"] == 64 and metrics["psnr"] == pytest.approx(summary["psnr"])
  assert 0 < metrics["codebook_usage"] <= 1 and metrics["perplexity"] > 1
  rows = workdir_lib.read_metrics(workdir)
  assert [r["step"] for r in rows if "loss" in r] == list(range(10, 81, 10))
  assert {"codebook_usage", "perplexity"} <= {k.split("batch_")[-1] for k in rows[0]}

  # The learned model beats the mean training image on held-out images.
  tok = tokenizers.load(workdir)
  val = scenes.ScenesSource(scenes_dir, "validation")
  x = np.stack([val[i]["rgb"] for i in range(len(val))]).astype(np.float32) / 255
  train = scenes.ScenesSource(scenes_dir, "train")
  mean_image = np.mean([train[i]["rgb"] for i in range(len(train))], axis=0) / 255
  mse_model = float(np.mean((np.asarray(tok.reconstruct(x)) - x) ** 2))
  mse_mean = float(np.mean((mean_image[None] - x) ** 2))
  assert mse_model < 0.75 * mse_mean, (mse_model, mse_mean)
  assert 10 * np.log10(1 / mse_model) == pytest.approx(metrics["psnr_of_mean_mse"], abs=0.05)

  # Rerunning with more steps resumes from the saved step.
  summary = tokenizer_trainer.run(_config("rgb", scenes_dir, 85), workdir)
  assert summary["steps"] == 85
  rows = workdir_lib.read_metrics(workdir)
  assert [r["step"] for r in rows if "loss" in r][-2:] == [80, 85]


@pytest.mark.parametrize("modality", ["normals", "edges"])
def test_tiny_geometry_tokenizers_beat_a_constant_map(modality, geometry_dir, tmp_path):
  """Normals and edges tokenizers (issue 13) learn from their configs: after 60
  steps their held-out reconstruction beats the best constant guess (the
  ground's normal, pointing up; an edge map that marks every pixel)."""
  summary = tokenizer_trainer.run(_config(modality, geometry_dir, 60), str(tmp_path / modality))
  assert os.path.exists(summary["grid"])
  tok = tokenizers.load(str(tmp_path / modality))
  val = scenes.ScenesSource(geometry_dir, "validation")
  x = np.stack([val[i][modality] for i in range(len(val))])
  recon = np.asarray(tok.reconstruct(x))
  assert recon.shape == x.shape
  if modality == "normals":
    surface = np.any(x != 0, -1)
    up = np.array([0.0, 1.0, 0.0])
    constant = np.degrees(np.arccos(np.clip(x[surface] @ up / np.linalg.norm(up), -1, 1))).mean()
    angle = np.degrees(np.arccos(np.clip(np.sum(recon * x, -1)[surface], -1, 1))).mean()
    assert angle == pytest.approx(summary["angle_deg"], abs=0.1)
    assert angle < 0.7 * constant, (angle, constant)
    objects = np.stack([val[i]["semseg"] for i in range(len(val))]) >= 2  # Not sky or ground.
    on_objects = np.degrees(np.arccos(np.clip(np.sum(recon * x, -1)[objects], -1, 1))).mean()
    assert on_objects == pytest.approx(summary["angle_deg_objects"], abs=0.1)
  else:
    p = x.mean()
    constant = 2 * p / (1 + p)  # F1 of marking every pixel.
    tp = np.sum((recon == 1) & (x == 1))
    f1 = 2 * tp / max(np.sum(recon == 1) + np.sum(x == 1), 1)
    assert f1 == pytest.approx(summary["f1"], abs=1e-3)
    assert f1 > constant + 0.1, (f1, constant)
