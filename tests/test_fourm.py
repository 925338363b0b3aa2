"""The 4M model: masking semantics, cached decoding, sharding, sizes, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m4 import modalities
from m4 import sharding
from m4.models import configs
from m4.models import fourm
from m4.models import synthetic

NAMES = ("rgb", "depth", "semseg", "caption")


def _tiny(**overrides):
  cfg = configs.preset("tiny", encoder_modalities=NAMES, decoder_modalities=NAMES,
                       num_encoder_tokens=48, num_decoder_tokens=48, **overrides)
  # rbg keys: the same initialisers, 3x faster to compile on CPU than threefry.
  return fourm.FourM(cfg, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))


@pytest.fixture(scope="module")
def model():
  return _tiny()


@nnx.jit(static_argnums=(2, 3))
def _forward(model, batch, n_enc=None, n_dec=None):
  enc = model.encode(batch, n_enc)
  dec = model.decode(batch, enc, n_dec)
  return enc, dec


def _per_token(dec, names=NAMES, model_names=NAMES):
  """{(modality name, sample, position): decoder output} at valid slots."""
  out, slots = jax.device_get((dec.out, dec.slots))
  table = {}
  for b, s in zip(*np.nonzero(slots.valid)):
    name = model_names[slots.modality[b, s]]
    if name in names:
      table[(name, int(b), int(slots.position[b, s]))] = out[b, s]
  return table


def _assert_same(a, b, atol=2e-5):
  assert a.keys() == b.keys() and a
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=atol, err_msg=str(k))


def _batch(seed=0, batch_size=4, n=40):
  return synthetic.masked_batch(NAMES, batch_size, n, n, seed=seed)


def test_decoder_tokens_ignore_other_modalities_targets(model):
  batch = _batch()
  other = {k: dict(v) for k, v in batch.items()}
  # Other targets for depth: none at all, and fresh random target ids elsewhere.
  other["depth"]["target_mask"] = np.zeros_like(batch["depth"]["target_mask"])
  other["depth"]["decoder_attention_mask"] = np.zeros_like(batch["depth"]["decoder_attention_mask"])
  keep = ("rgb", "semseg", "caption")
  _, dec_a = _forward(model, batch)
  _, dec_b = _forward(model, other)
  _assert_same(_per_token(dec_a, keep), _per_token(dec_b, keep))


def test_padding_slots_and_unselected_tokens_change_nothing(model):
  batch = _batch(seed=1)
  _, dec_a = _forward(model, batch, 48, 48)
  noisy = {k: dict(v) for k, v in batch.items()}
  rng = np.random.default_rng(0)
  for name in ("rgb", "depth", "semseg"):  # Ids that are neither inputs nor targets.
    unused = ~(batch[name]["input_mask"] | batch[name]["target_mask"])
    noisy[name]["tensor"] = np.where(unused, rng.integers(0, 512, unused.shape),
                                     batch[name]["tensor"]).astype(np.int32)
  _, dec_b = _forward(model, noisy, 64, 72)  # More encoder and decoder padding.
  _assert_same(_per_token(dec_a), _per_token(dec_b))
  assert not np.asarray(dec_b.slots.valid).all()


def test_modality_order_does_not_change_per_token_results(model):
  batch = _batch(seed=2)
  _, dec_a = _forward(model, batch)
  order = ("caption", "semseg", "rgb", "depth")
  cfg = model.cfg.replace(encoder_modalities=order, decoder_modalities=order[::-1])
  other = nnx.eval_shape(lambda: fourm.FourM(cfg, rngs=nnx.Rngs(1)))
  nnx.update(other, nnx.state(model, nnx.Param))  # Same parameters, by name.
  reversed_batch = {k: batch[k] for k in reversed(list(batch))}
  _, dec_b = _forward(other, reversed_batch)
  _assert_same(_per_token(dec_a), _per_token(dec_b, model_names=order[::-1]))


def test_caption_decoder_is_causal(model):
  batch = _batch(seed=3)
  cap = batch["caption"]
  later = {k: dict(v) for k, v in batch.items()}
  ll = modalities.get("caption").num_tokens + 1
  n_tgt = cap["target_mask"].sum(axis=1)
  b = int(np.argmax(n_tgt))
  assert n_tgt[b] >= 4
  last = ll + n_tgt[b] - 1
  later["caption"]["tensor"] = cap["tensor"].copy()
  later["caption"]["tensor"][b, last - 1] = (cap["tensor"][b, last - 1] + 1) % 512
  _, dec_a = _forward(model, batch)
  _, dec_b = _forward(model, later)
  a, c = _per_token(dec_a, ("caption",)), _per_token(dec_b, ("caption",))
  changed = {k for k in a if not np.allclose(a[k], c[k], atol=1e-6)}
  # Slot p reads id p: only slots reading the changed id (and later) move.
  assert changed == {("caption", b, last - 1)}
  # Without decoder_attention_mask the model uses 4M's: the same outputs.
  bare = {k: {f: a for f, a in v.items() if f != "decoder_attention_mask"}
          for k, v in batch.items()}
  _assert_same(_per_token(dec_a), _per_token(_forward(model, bare)[1]))


def _with_random_biases(model):
  """Every bias and norm offset of `model` set to random non-zero values."""
  params = nnx.state(model, nnx.Param)
  keys = iter(jax.random.split(jax.random.key(1), 64))
  biased = jax.tree_util.tree_map_with_path(
      lambda path, a: 0.1 * jax.random.normal(next(keys), a.shape, a.dtype)
      if "bias" in jax.tree_util.keystr(path) else a, params)
  nnx.update(model, biased)
  return model


@pytest.mark.parametrize("biases", [False, True])
def test_cached_caption_decoding_matches_teacher_forcing(model, biases):
  # With biases: 4M's released layout (qkv, projections, MLP, norms), random.
  if biases:
    model = _with_random_biases(_tiny(qkv_bias=True, proj_bias=True, mlp_bias=True,
                                      norm_bias=True))
  batch = _batch(seed=4)
  enc, dec = _forward(model, batch)
  want = jax.device_get(model.logits(dec.out, "caption"))
  slots = jax.device_get(dec.slots)
  cap = batch["caption"]
  ll = modalities.get("caption").num_tokens + 1
  steps = int(cap["target_mask"].sum(axis=1).max()) - 1
  cache = model.init_cache(enc, max_length=steps)
  step = nnx.jit(lambda m, c, ids, pos: m.decode_step(c, "caption", ids, pos))
  j = NAMES.index("caption")
  checked = 0
  for t in range(steps):
    logits, cache = step(model, cache, jnp.asarray(cap["tensor"][:, ll + t]), t)
    for b in range(cap["tensor"].shape[0]):
      hit = np.nonzero(slots.valid[b] & (slots.modality[b] == j) & (slots.position[b] == ll + t))[0]
      if hit.size:
        np.testing.assert_allclose(np.asarray(logits[b]), want[b, hit[0]], atol=2e-5)
        checked += 1
  assert checked >= steps


def test_encoder_features_for_transfer(model):
  batch = _batch(seed=5)
  enc, _ = _forward(model, batch)
  slots = jax.device_get(enc.slots)
  for i, name in enumerate(NAMES):  # Every input token appears once, in its slot.
    b_idx, s_idx = np.nonzero(slots.valid & (slots.modality == i))
    got = sorted(zip(b_idx.tolist(), slots.position[b_idx, s_idx].tolist()))
    want_b, want_p = np.nonzero(batch[name]["input_mask"])
    assert got == sorted(zip(want_b.tolist(), want_p.tolist()))
  assert np.isfinite(np.asarray(enc.out)).all()  # Padding slots too (never NaN).


def test_pixel_patches_go_to_their_slots():
  modalities.register(modalities.Modality("pix_test", modalities.PIXELS, 0, 4, grid=(2, 2),
                                          roles=(modalities.INPUT,)))
  cfg = configs.preset("tiny", encoder_modalities=("pix_test",), decoder_modalities=("rgb",),
                       num_encoder_tokens=4, num_decoder_tokens=4, patch_size=2)
  m = fourm.FourM(cfg, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
  image = np.zeros((1, 4, 4, 3), np.float32)
  image[0, 2:4, 0:2] = 1.0  # Patch at row 1, column 0: position 2.
  batch = {"pix_test": {"tensor": image, "input_mask": np.ones((1, 4), bool)}}
  slots = m.encode(batch).slots
  tokens, _ = m._encoder_tokens(batch, "pix_test", slots, 0, None)
  norms = np.linalg.norm(np.asarray(tokens[0]), axis=-1)
  assert norms[2] > 0 and np.all(norms[[0, 1, 3]] == 0)


@pytest.mark.parametrize("change, what, atol", [(dict(remat="full"), "grads", 1e-6),
                                                (dict(backward="plain"), "grads", 1e-6),
                                                (dict(scan_layers=False), "loss", 1e-6),
                                                (dict(dtype="bfloat16"), "loss", 3e-2)])
def test_layer_options_give_the_same_results(model, change, what, atol):
  batch = _batch(seed=8)
  other = nnx.eval_shape(lambda: fourm.FourM(model.cfg.replace(**change), rngs=nnx.Rngs(0)))
  nnx.update(other, nnx.state(model, nnx.Param))
  if what == "grads":  # Rematerialisation only changes the backward pass.
    fn = nnx.jit(lambda m, b: nnx.to_pure_dict(nnx.grad(lambda m, b: m(b)[0])(m, b)))
  else:
    fn = nnx.jit(lambda m, b: m(b)[1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol),
               fn(model, batch), fn(other, batch))


def test_init_matches_the_reference_scheme(model):
  d = model.cfg.dim
  qkv = np.asarray(model.encoder.qkv[...])
  bound = np.sqrt(6 / (d + d))  # Per q / k / v part.
  assert np.abs(qkv).max() <= bound and np.abs(qkv).max() > 0.95 * bound
  np.testing.assert_allclose(qkv.std(), bound / np.sqrt(3), rtol=0.05)
  emb = np.asarray(model.encoder_embed["rgb"][...])
  np.testing.assert_allclose(emb.std(), 0.02, rtol=0.05)
  v = modalities.get("rgb").vocab_size
  tied = np.asarray(model.decoder_embed["rgb"][...])  # Xavier, as the reference ends up.
  assert np.abs(tied).max() <= np.sqrt(6 / (v + d))
  assert np.all(np.asarray(model.encoder.norm1_scale[...]) == 1)
  assert np.all(np.asarray(model.context_proj_bias[...]) == 0)


SEVEN = {  # 4M-7's modalities at 224 px (vocabularies as released).
    "tok_rgb7": dict(kind="image", vocab_size=16384, num_tokens=196, grid=(14, 14)),
    "tok_depth7": dict(kind="image", vocab_size=8192, num_tokens=196, grid=(14, 14)),
    "tok_normal7": dict(kind="image", vocab_size=8192, num_tokens=196, grid=(14, 14)),
    "tok_semseg7": dict(kind="image", vocab_size=4096, num_tokens=196, grid=(14, 14)),
    "tok_clip7": dict(kind="image", vocab_size=8192, num_tokens=196, grid=(14, 14)),
    "caption7": dict(kind="sequence", vocab_size=30000, num_tokens=256),
    "det7": dict(kind="sequence", vocab_size=30000, num_tokens=256),
    "rgb_pixels7": dict(kind="pixels", vocab_size=0, num_tokens=196, grid=(14, 14),
                        roles=("input",)),
}


@pytest.mark.parametrize("size, trunk_millions", [("B", 198), ("L", 705), ("XL", 2819)])
def test_parameter_counts_of_4m_sizes(size, trunk_millions):
  modalities.register_from_config(SEVEN)
  outs = tuple(n for n in SEVEN if n != "rgb_pixels7")
  cfg = configs.preset(size, encoder_modalities=tuple(SEVEN), decoder_modalities=outs)
  abstract = nnx.eval_shape(lambda: fourm.FourM(cfg, rngs=nnx.Rngs(0)))
  state = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  # 4M's paper counts the transformer blocks: B 198M, L 705M, XL 2.8B.
  trunk = count(state["encoder"]) + count(state["decoder"])
  assert round(trunk / 1e6) == trunk_millions
  assert count(state) > trunk


def test_sharded_step_equals_single_device_step():
  from m4.jobs import pretrain  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  cfg = _tiny().cfg
  sharded = sharding.init_sharded(
      lambda: fourm.FourM(cfg, rngs=nnx.Rngs(jax.random.key(0, impl="rbg"))), mesh)
  qkv = sharded.encoder.qkv[...]
  # (layers, D, 3, H, hd) = (2, 64, 3, 4, 16) over fsdp=2 (D) and tensor=2 (H).
  assert {s.data.shape for s in qkv.addressable_shards} == {(2, 32, 3, 2, 16)}
  single = nnx.eval_shape(lambda: fourm.FourM(cfg, rngs=nnx.Rngs(0)))
  nnx.update(single, jax.tree.map(lambda a: jnp.asarray(np.asarray(a)),
                                  nnx.state(sharded, nnx.Param)))
  # eps 1e-6: a first AdamW step is ~lr * g / (|g| + eps), which for |g| ~ 1e-8
  # would turn float summation-order noise into visible parameter changes.
  opt = dict(lr=1e-3, warmup_steps=0, final_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-6,
             weight_decay=0.05, clip_norm=1.0)
  tx, schedule = pretrain.make_optimizer(opt, 10, single)
  graphdef = nnx.graphdef(single)
  batch = _batch(seed=6, batch_size=8)
  want_state, want = pretrain.make_train_step(graphdef, tx, schedule=schedule)(
      pretrain.init_state(single, tx), batch)

  state = pretrain.init_state(sharded, tx)
  shardings = pretrain.train_state_shardings(state, mesh)
  state = jax.device_put(state, shardings)
  step = pretrain.make_train_step(graphdef, tx, schedule=schedule, mesh=mesh,
                                  state_shardings=shardings)
  got_state, got = step(state, sharding.to_global(batch, mesh))

  qkv = got_state.params["encoder"]["qkv"]
  qkv = qkv.get_value() if hasattr(qkv, "get_value") else qkv[...]
  assert {s.data.shape for s in qkv.addressable_shards} == {(2, 32, 3, 2, 16)}
  np.testing.assert_allclose(float(got["loss"]), float(want["loss"]), rtol=1e-6)
  for k in want:
    np.testing.assert_allclose(float(got[k]), float(want[k]), rtol=1e-5, atol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6),
               nnx.to_pure_dict(want_state.params), nnx.to_pure_dict(got_state.params))


def test_a_few_steps_learn_a_batch():
  from m4.jobs import pretrain  # pylint: disable=g-import-not-at-top
  model = _tiny()
  opt = dict(lr=3e-3, warmup_steps=2, final_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
             weight_decay=0.0, clip_norm=1.0)
  tx, schedule = pretrain.make_optimizer(opt, 40, model)
  step = pretrain.make_train_step(nnx.graphdef(model), tx, schedule=schedule)
  state = pretrain.init_state(model, tx)
  batch = _batch(seed=7, batch_size=4)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  chance = np.mean([np.log(modalities.get(n).vocab_size) for n in NAMES])
  assert losses[0] > 0.9 * chance
  assert losses[-1] < 0.5 * chance, losses
  assert all(float(metrics[f"accuracy/{n}"]) > 0.2 for n in NAMES), metrics  # Chance < 0.002.


def test_bad_configs_and_batches_are_named(model):
  from m4 import workdir  # pylint: disable=g-import-not-at-top
  base = dict(encoder_modalities=["rgb"], decoder_modalities=["rgb"])
  for fields, match in ((dict(base, dimm=3), r"unknown fields \['dimm'\]"),
                        (dict(base, remat="x"), "config.model.remat"),
                        (dict(base, size="XXL"), "config.model.size"),
                        (dict(base, dim=66, num_heads=4), "config.model.dim")):
    with pytest.raises(workdir.ConfigError, match=match):
      configs.from_config(fields)
  with pytest.raises(workdir.ConfigError, match="encoder_modalities.*thermal"):
    configs.from_config(dict(base, size="tiny", encoder_modalities=["thermal"]))
  batch = _batch()
  batch["depth"] = dict(batch["depth"], tensor=batch["depth"]["tensor"][:, :10])
  with pytest.raises(ValueError, match=r"batch\['depth'\]\['tensor'\].*\(B, 64\)"):
    model.encode(batch)


_LOAD_IN_A_FRESH_PROCESS = """
import json, sys
import numpy as np
from m4 import modalities
from m4.models import pretrained
model = pretrained.load(sys.argv[1])
x = np.arange(32, dtype=np.int32).reshape(2, 16) % 32
batch = {"thermal_cfg": {"tensor": x, "input_mask": np.ones((2, 16), bool)}}
print(json.dumps({"registered": "thermal_cfg" in modalities.names(),
                  "spec": model.cfg.modality("thermal_cfg").to_dict(),
                  "out": np.asarray(model.encode(batch, 16).out).tolist()}))
"""


def test_a_model_is_described_by_its_config(tmp_path):
  """Specs the registry lacks build a model, are saved with it, and a fresh
  process loads it from its directory alone, registering nothing."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from m4.models import pretrained  # pylint: disable=g-import-not-at-top
  thermal = modalities.Modality("thermal_cfg", modalities.IMAGE, vocab_size=32, num_tokens=16,
                                grid=(4, 4))
  cfg = configs.preset("tiny", encoder_modalities=("rgb", "thermal_cfg"),
                       decoder_modalities=("thermal_cfg",), modality_specs=(thermal,),
                       num_encoder_tokens=16, num_decoder_tokens=8)
  model = fourm.FourM(cfg, rngs=nnx.Rngs(3))
  assert "thermal_cfg" not in modalities.names()
  assert model.encoder_embed["thermal_cfg"][...].shape == (32, cfg.dim)
  pretrained.save(str(tmp_path / "m"), model)
  x = np.arange(32, dtype=np.int32).reshape(2, 16) % 32
  want = np.asarray(model.encode(
      {"thermal_cfg": {"tensor": x, "input_mask": np.ones((2, 16), bool)}}, 16).out)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, "-c", _LOAD_IN_A_FRESH_PROCESS, str(tmp_path / "m")],
                       cwd=repo, env=dict(os.environ, PYTHONPATH=repo), capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  got = json.loads(run.stdout.strip().splitlines()[-1])
  assert not got["registered"]
  assert got["spec"] == thermal.to_dict() | {"grid": [4, 4], "roles": ["input", "target"]}
  # Every output, not their sum (normalised features sum to about 0).
  np.testing.assert_allclose(np.asarray(got["out"]), want, rtol=1e-5, atol=1e-5)


def test_a_modality_added_by_a_config_alone_trains():
  """Issue 13's rule: a new modality is a registry entry from a config (as
  every job's `config.modalities`), and the model trains with it unchanged."""
  from m4 import optim  # pylint: disable=g-import-not-at-top
  from m4.jobs import pretrain  # pylint: disable=g-import-not-at-top
  from m4.models import synthetic  # pylint: disable=g-import-not-at-top
  modalities.register_from_config(
      {"thermal_step": dict(kind="image", vocab_size=48, num_tokens=16, grid=(4, 4))})
  cfg = configs.preset("tiny", encoder_modalities=("rgb", "thermal_step"),
                       decoder_modalities=("rgb", "thermal_step"),
                       num_encoder_tokens=16, num_decoder_tokens=16)
  model = fourm.FourM(cfg, rngs=nnx.Rngs(0))
  tx, _ = optim.make(dict(lr=1e-2, warmup_steps=0, decay_steps=10))
  state = pretrain.init_state(model, tx)
  step = pretrain.make_train_step(nnx.graphdef(model), tx)
  batch = synthetic.masked_batch(["rgb", "thermal_step"], 8, 16, 16, seed=0)
  before = np.asarray(state.params["encoder_embed"]["thermal_step"].value).copy()
  losses = []
  for _ in range(4):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0], losses
  assert "loss/thermal_step" in metrics
  assert not np.allclose(before, np.asarray(state.params["encoder_embed"]["thermal_step"].value))


BF16_STEP_TOLERANCE = 0.03  # |loss(bf16 compute) - loss(fp32)| after each of 5 AdamW steps.


def test_a_bf16_training_step_tracks_the_fp32_one(model):
  """Mixed precision: bf16 matmuls, fp32 parameters and optimizer state."""
  from m4 import optim  # pylint: disable=g-import-not-at-top
  from m4.jobs import pretrain  # pylint: disable=g-import-not-at-top
  assert model.cfg.backward == "auto"
  tx, _ = optim.make(dict(lr=1e-3, warmup_steps=0, decay_steps=10))
  losses = {}
  for dtype in ("float32", "bfloat16"):
    m = nnx.eval_shape(lambda: fourm.FourM(model.cfg.replace(dtype=dtype), rngs=nnx.Rngs(0)))
    nnx.update(m, jax.tree.map(jnp.copy, nnx.state(model, nnx.Param)))
    state = pretrain.init_state(m, tx)
    step = pretrain.make_train_step(nnx.graphdef(m), tx)
    losses[dtype] = []
    for i in range(5):
      state, metrics = step(state, _batch(seed=20 + i))
      losses[dtype].append(float(metrics["loss"]))
    dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype("float32")}, dtypes
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], atol=BF16_STEP_TOLERANCE)
  assert losses["float32"][-1] < losses["float32"][0]


def test_cpu_tuned_backward_only_where_asked(model):
  from m4.models import layers  # pylint: disable=g-import-not-at-top
  batch = _batch(seed=9)
  for backward, tuned in (("auto", jax.default_backend() == "cpu"), ("cpu_tuned", True),
                          ("plain", False)):
    m = nnx.eval_shape(lambda b=backward: fourm.FourM(model.cfg.replace(backward=b),
                                                     rngs=nnx.Rngs(0)))
    nnx.update(m, nnx.state(model, nnx.Param))
    assert layers.cpu_tuned(m.cfg) == tuned
    graphdef, params = nnx.split(m)
    grad = jax.grad(lambda p: nnx.merge(graphdef, p)(batch)[0])
    assert ("optimization_barrier" in str(jax.make_jaxpr(grad)(params))) == tuned, backward


def test_cpu_tuned_heads_give_the_same_bits():
  """The chunked loss's CPU hint (a large head's logits' gradient made apart)
  is only where asked and only for large heads, and changes no bit."""
  from m4.models import heads as H  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  b, m, d = 4, 40, 16
  sizes = (H.BARRIER_MIN_VOCAB, 64)
  y = jnp.asarray(rng.randn(b, m, d), jnp.float32)
  hs = tuple(jnp.asarray(rng.randn(v, d), jnp.float32) for v in sizes)
  modality = jnp.asarray(rng.randint(0, 2, (b, m)))
  targets = jnp.asarray(rng.randint(0, 64, (b, m)))
  valid, weights = jnp.asarray(rng.rand(b, m) > 0.2), jnp.asarray(rng.rand(b, m), jnp.float32)

  def grads(cpu_tuned, heads=hs):
    f = lambda y, hs: H.grouped_cross_entropy(y, hs, modality=modality, valid=valid,
                                              targets=targets, weights=weights, chunk=32,
                                              cpu_tuned=cpu_tuned)[0]
    g = jax.value_and_grad(f, argnums=(0, 1))
    return str(jax.make_jaxpr(g)(y, heads)).count("optimization_barrier"), jax.jit(g)(y, heads)

  (tuned, got), (plain, want) = grads(True), grads(False)
  assert (tuned, plain) == (1, 0)  # The large head only.
  assert grads(True, (hs[1], hs[1]))[0] == 0
  jax.tree.map(np.testing.assert_array_equal, got, want)
