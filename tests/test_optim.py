"""m4.optim: rules on parameter paths, and the three jobs' optimizers against
plain optax chains built here (the behaviour before m4.optim)."""

import runpy

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import m4  # pylint: disable=unused-import
from m4 import modalities
from m4 import optim
from m4.models import configs
from m4.models import fourm
from m4.models import transfer
from m4.tokenizers import vq_tokenizer
from m4.jobs import pretrain
from m4.jobs import tokenizer as tok_trainer
from m4.jobs import transfer_protocols
from tests.conftest import REPO

PIXELS = "rgb_pixels@32test"  # As tests/transfer_setup.py registers it.
PIXELS_SPEC = dict(kind="pixels", vocab_size=0, num_tokens=16, grid=(4, 4), roles=("input",),
                   tokenizer=None, data_key="rgb")


def _cfg(**kw):
  modalities.register_from_config({PIXELS: PIXELS_SPEC})
  return configs.FourMConfig(**{**dict(
      encoder_modalities=(PIXELS, "rgb", "caption"), decoder_modalities=("rgb", "caption"),
      dim=32, encoder_depth=3, decoder_depth=1, num_heads=2, patch_size=8), **kw})


def _names(tree) -> dict:
  return {optim.path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _random_like(tree, seed):
  """Arrays of the tree's shapes (ShapeDtypeStructs in, values out)."""
  rng = np.random.default_rng(seed)  # numpy: no compile per leaf shape.
  return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape, np.float32)), tree)


def _assert_same_updates(tx, want_tx, params, steps=4):
  """`steps` updates of both on random gradients: bit-identical."""
  state, want_state = tx.init(params), want_tx.init(params)
  update, want_update = jax.jit(tx.update), jax.jit(want_tx.update)  # One compile, not one per op.
  for i in range(steps):
    grads = _random_like(params, 100 + i)
    updates, state = update(grads, state, params)
    want, want_state = want_update(grads, want_state, params)
    jax.tree.map(np.testing.assert_array_equal, updates, want)
    params = optax.apply_updates(params, updates)
  assert jax.tree.structure(state) == jax.tree.structure(want_state)


# ------------------------------------------------------------------ rules


def test_rules_match_whole_paths_first_rule_wins():
  rules = (("a/b", 1), ("a/.*", 2), (".*/kernel", 3))
  assert optim.match(rules, "a/b") == 1
  assert optim.match(rules, "a/b/c") == 2
  assert optim.match(rules, "x/kernel") == 3
  assert optim.match(rules, "x/kernel_bias") is None  # Full matches only.
  assert optim.match(rules, "ab", default=0) == 0
  tree = {"a": {"b": 0, "c": [0, 0]}, "x": {"kernel": 0}}
  assert optim.rule_tree(rules, tree, 0) == {"a": {"b": 1, "c": [2, 2]}, "x": {"kernel": 3}}
  # nnx.State paths: the Variable's own `value` is not part of the name.
  state = nnx.State({"x": {"kernel": nnx.Param(jnp.zeros(2))}})
  assert list(_names(state)) == ["x/kernel"]
  frozen = optim.nnx_filter(((".*/kernel", True),))
  assert frozen(("x", "kernel"), None) and not frozen(("x", "bias"), None)


def test_schedules():
  warm_cos = optim.schedule(1.0, 3, 10, 0.1)
  want = optax.warmup_cosine_decay_schedule(0.0, 1.0, 3, 10, 0.1)
  assert [float(warm_cos(s)) for s in range(12)] == [float(want(s)) for s in range(12)]
  linear = optim.schedule(1.0, 2, 6, 0.2, decay="linear")
  np.testing.assert_allclose([float(linear(s)) for s in range(8)],
                             [0, 0.5, 1, 0.8, 0.6, 0.4, 0.2, 0.2], rtol=1e-6)
  const = optim.schedule(1.0, 2, 6, decay="constant")
  assert [float(const(s)) for s in range(5)] == [0, 0.5, 1, 1, 1]
  with pytest.raises(ValueError, match="decay"):
    optim.schedule(1.0, 2, 6, decay="step")
  with pytest.raises(ValueError, match="unknown optimizer fields"):
    optim.make(dict(lr=1.0, decay_steps=2, weight_dacay=0.1))


def test_frozen_and_lr_mult_rules():
  params = {"enc": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, "head": {"kernel": jnp.ones((3,))}}
  tx, _ = optim.make(dict(lr=0.1, decay_steps=10, frozen=(("enc/b", True),),
                          lr_mults=(("enc/w", (0.5, 0.25)), ("head/.*", 2.0))))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert not np.any(updates["enc"]["b"])
  step = float(updates["head"]["kernel"][0]) / 2.0  # Adam's first step: lr(0) * sign(g).
  np.testing.assert_array_equal(updates["enc"]["w"][:, 0], [0.5 * step, 0.25 * step])
  with pytest.raises(ValueError, match="enc/w has leading axis 2, not the 3 factors"):
    bad, _ = optim.make(dict(lr=0.1, decay_steps=10, lr_mults=(("enc/w", (1.0, 2.0, 3.0)),)))
    bad.update(grads, bad.init(params), params)


# ------------------------------------------------------------------ the jobs' optimizers


def _old_fourm_decays(path: str, pixels) -> bool:
  """The weight-decay choice of FourM before m4.optim (FourM.decay_mask)."""
  keys = path.split("/")
  if keys[0] == "heads":
    return True
  if keys[0] == "encoder_embed":
    return keys[1] in pixels
  return keys[-1] in {"qkv", "proj", "cross_q", "cross_kv", "cross_proj", "mlp_in", "mlp_out",
                      "context_proj"}


def test_pretrain_optimizer_equals_adamw_with_its_mask():
  cfg = _cfg(tie_heads=False)
  model = nnx.eval_shape(lambda: fourm.FourM(cfg, rngs=nnx.Rngs(0)))
  params = _random_like(nnx.state(model, nnx.Param), 0)
  decays = _names(optim.rule_tree(model.decay_rules(), params, False))
  want = {k: _old_fourm_decays(k, {PIXELS}) for k in decays}
  assert decays == want
  assert decays["encoder/qkv"] and decays["decoder/cross_kv"] and decays["heads/rgb"]
  assert decays[f"encoder_embed/{PIXELS}"] and not decays["encoder_embed/rgb"]
  assert not decays["encoder/norm1_scale"] and not decays[f"modality_embed/{PIXELS}"]

  opt = dict(lr=1e-2, warmup_steps=2, final_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
             weight_decay=0.3, clip_norm=0.5)
  tx, schedule = pretrain.make_optimizer(opt, 6, model)
  want_schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 6, 1e-3)
  assert [float(schedule(s)) for s in range(8)] == [float(want_schedule(s)) for s in range(8)]
  mask = jax.tree_util.tree_map_with_path(
      lambda p, _: _old_fourm_decays(optim.path_name(p), {PIXELS}), params)
  want_tx = optax.chain(optax.clip_by_global_norm(0.5),
                        optax.adamw(want_schedule, b1=0.9, b2=0.95, eps=1e-8,
                                    weight_decay=0.3, mask=mask))
  _assert_same_updates(tx, want_tx, params)


def _old_transfer_decays(path: str) -> bool:
  """transfer.weight_decay_mask before m4.optim."""
  keys = path.split("/")
  if keys[0] != "backbone":
    return keys[-1] == "kernel"
  if keys[1] == "encoder_embed":
    return modalities.get(keys[2]).kind == modalities.PIXELS
  return keys[1] == "encoder" and keys[-1] in ("qkv", "proj", "mlp_in", "mlp_out")


def _old_layer_scale(path: str, x, depth: int, decay: float):
  """transfer.layer_scales before m4.optim."""
  keys = path.split("/")
  if keys[0] == "backbone" and keys[1] in ("encoder_embed", "modality_embed"):
    return np.full((), decay ** (depth + 1), np.float32)
  if keys[0] == "backbone" and keys[1] == "encoder":
    blocks = np.asarray(decay, np.float64) ** (depth - np.arange(depth))
    return blocks.reshape((depth,) + (1,) * (np.ndim(x) - 1)).astype(np.float32)
  return np.ones((), np.float32)


def _old_trainable(path: str, protocol: str, inputs) -> bool:
  keys = path.split("/")
  if keys[0] == "head":
    return True
  encoder = keys[0] == "backbone" and (
      keys[1] in ("encoder", "encoder_norm_scale", "encoder_norm_bias")
      or (keys[1] in ("encoder_embed", "modality_embed") and len(keys) > 2 and keys[2] in inputs))
  return protocol == "finetune" and encoder


@pytest.mark.parametrize("protocol", ["probe", "finetune"])
def test_transfer_optimizer_equals_adamw_with_layer_decay(protocol):
  cfg = transfer.backbone_config(_cfg(), (PIXELS, "rgb"))
  spec = dict(kind="classification", inputs=(PIXELS, "rgb"), target="labels/count",
              num_classes=4)
  task = transfer.TaskSpec.from_config("count", spec)
  model = nnx.eval_shape(lambda: transfer.TransferModel(cfg, task, image_size=(32, 32),
                                                        rngs=nnx.Rngs(0)))
  _, trainable, _ = nnx.split(model, transfer.trainable_filter(model, protocol), ...)
  everything = _names(nnx.state(model, nnx.Param))
  want = {k for k in everything if _old_trainable(k, protocol, (PIXELS, "rgb"))}
  assert set(_names(trainable)) == want
  params = _random_like(nnx.to_pure_dict(trainable), 1)
  depth, decay = cfg.encoder_depth, 0.5 if protocol == "finetune" else 1.0
  tx, schedule = transfer_protocols.make_optimizer(
      learning_rate=1e-2, min_learning_rate=1e-4, warmup_steps=0, num_steps=5,
      weight_decay=0.05, layer_decay=decay, depth=depth, grad_clip=1.0, b1=0.9, b2=0.999,
      decay_rules=model.decay_rules())
  want_schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 1, 5, end_value=1e-4)
  assert [float(schedule(s)) for s in range(7)] == [float(want_schedule(s)) for s in range(7)]
  mask = lambda p: jax.tree_util.tree_map_with_path(
      lambda path, _: _old_transfer_decays(optim.path_name(path)), p)
  parts = [optax.clip_by_global_norm(1.0),
           optax.adamw(want_schedule, b1=0.9, b2=0.999, weight_decay=0.05, mask=mask)]
  if decay < 1:
    parts.append(optax.stateless(lambda u, p=None: jax.tree_util.tree_map_with_path(
        lambda path, x: x * _old_layer_scale(optim.path_name(path), x, depth, decay), u)))
  _assert_same_updates(tx, optax.chain(*parts), params)


def test_tokenizer_optimizer_decays_matrices_only():
  config = runpy.run_path(f"{REPO}/configs/tokenizers/rgb_scenes.py")["get_config"]()
  spec = tok_trainer.spec_from_config(config)
  model = nnx.eval_shape(lambda: vq_tokenizer.build(spec, nnx.Rngs(0))[0])
  params = _random_like(nnx.state(model, nnx.Param), 2)
  decays = _names(optim.rule_tree(tok_trainer.DECAY_RULES, params, False))
  assert decays == {k: np.ndim(x) > 1 for k, x in _names(params).items()}
  opt = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=2, end_learning_rate=1e-5, weight_decay=0.1,
      b1=0.9, b2=0.99, grad_clip=1.0))
  tx, schedule = tok_trainer.make_optimizer(opt, 5)
  want_schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 2, 5, 1e-5)
  assert [float(schedule(s)) for s in range(7)] == [float(want_schedule(s)) for s in range(7)]
  want_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      want_schedule, b1=0.9, b2=0.99, weight_decay=0.1,
      mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)))
  _assert_same_updates(tx, want_tx, params, steps=3)
