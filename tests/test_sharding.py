"""Mesh from config, logical rules, and parameter/batch shardings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m4 import sharding
from m4.workdir import ConfigError


class _Mlp(nnx.Module):

  def __init__(self, rngs):
    init = nnx.initializers.lecun_normal()
    self.w1 = nnx.Param(nnx.with_partitioning(init, ("embed", "mlp"))(rngs.params(), (16, 32)))
    self.w2 = nnx.Param(nnx.with_partitioning(init, ("mlp", "embed"))(rngs.params(), (32, 16)))

  def __call__(self, x):
    h = sharding.constrain(x @ self.w1, ("act_batch", "act_mlp"))
    return h @ self.w2


def test_make_mesh_fills_and_validates():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="config.mesh"):
    sharding.make_mesh({"data": 3})
  with pytest.raises(ValueError, match="unknown axes"):
    sharding.make_mesh({"model": 2})


def test_sharding_rules_from_config_refuse_unknown_names_and_axes_by_rule():
  assert sharding.rules_from_config(None) == sharding.DEFAULT_RULES
  assert sharding.rules_from_config([["act_batch", ["data", "fsdp"]], ("embed", None)]) == (
      ("act_batch", ("data", "fsdp")), ("embed", None))
  cases = {  # rules: the error. The doc's old names ("batch", "length") replicated silently.
      (("act_batch", "data"), ("batch", "data")): r"^config\.sharding_rules\[1\]: unknown"
                                                  r" logical axis 'batch'; the models name embed,",
      (("mlp", ("tensor", "model")),): r"^config\.sharding_rules\[0\]: 'mlp' maps to"
                                        r" \['model'\], not mesh axes",
      (("embed",),): r"^config\.sharding_rules\[0\]: \('embed',\) is not a",
      ("embed",): r"^config\.sharding_rules\[0\]: 'embed' is not a",
  }
  for rules, match in cases.items():
    with pytest.raises(ConfigError, match=match):
      sharding.rules_from_config(rules)


def test_logical_to_spec_uses_each_mesh_axis_once():
  rules = (("act_batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"))
  assert sharding.logical_to_spec(("act_batch", "embed"), rules) == jax.sharding.PartitionSpec(
      ("data", "fsdp"), None)
  assert sharding.logical_to_spec(("embed", "mlp"), rules) == jax.sharding.PartitionSpec(
      "fsdp", "tensor")


def test_params_are_split_and_step_matches_single_device():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model = _Mlp(nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  x = np.random.RandomState(0).randn(8, 16).astype(np.float32)

  def loss(state, x):
    return jnp.mean(nnx.merge(graphdef, state)(x) ** 2)

  want = jax.jit(jax.grad(loss))(state, x)
  shardings = sharding.state_shardings(state, mesh)
  with sharding.use(mesh):
    sharded = jax.device_put(state, shardings)
    xg = sharding.to_global(x, mesh)
    got = jax.jit(jax.grad(loss))(sharded, xg)
  w1 = sharded["w1"].get_value() if hasattr(sharded["w1"], "get_value") else sharded["w1"].value
  # (16, 32) over fsdp=2 x tensor=2: each device holds an (8, 16) block.
  assert {s.data.shape for s in w1.addressable_shards} == {(8, 16)}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), want, got)


def test_init_sharded_places_params_without_a_full_copy():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model = sharding.init_sharded(lambda: _Mlp(nnx.Rngs(0)), mesh)
  ref = _Mlp(nnx.Rngs(0))
  w1 = model.w1.get_value() if hasattr(model.w1, "get_value") else model.w1.value
  assert {s.data.shape for s in w1.addressable_shards} == {(8, 16)}
  np.testing.assert_array_equal(np.asarray(w1), np.asarray(ref.w1[...]))


def test_activations_and_parameters_have_their_own_names():
  rules = sharding.DEFAULT_RULES
  P = jax.sharding.PartitionSpec
  assert sharding.logical_to_spec(("embed", "mlp"), rules) == P("fsdp", "tensor")
  # Activations keep their width whole whatever the batch rule takes.
  assert sharding.logical_to_spec(("act_batch", "act_length", "act_embed"), rules) == P(
      ("data", "fsdp"), None, None)
  assert sharding.logical_to_spec(("act_embed",), rules) == P(None)


def test_heads_score_their_vocabulary_slice_and_match_one_device():
  from m4.models import heads as H  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  b, m, d = 8, 6, 16
  y = jnp.asarray(rng.randn(b, m, d), jnp.float32)
  hs = (jnp.asarray(rng.randn(32, d), jnp.float32), jnp.asarray(rng.randn(12, d), jnp.float32))
  modality = jnp.asarray(rng.randint(0, 2, (b, m)))
  valid = jnp.asarray(rng.rand(b, m) > 0.2)
  targets = jnp.where(modality == 0, rng.randint(0, 32, (b, m)), rng.randint(0, 12, (b, m)))
  weights = jnp.asarray(rng.rand(b, m), jnp.float32)

  def loss(y, hs):
    value, stats = H.grouped_cross_entropy(y, hs, modality=modality, valid=valid,
                                           targets=targets, weights=weights, chunk=4)
    return value, stats

  # jit caches by function, not by the sharding context: one function per run.
  grad = lambda: jax.jit(jax.value_and_grad(lambda *a: loss(*a), argnums=(0, 1), has_aux=True))
  (want, want_stats), want_grads = grad()(y, hs)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with sharding.use(mesh):
    jaxpr = str(jax.make_jaxpr(lambda *a: loss(*a))(y, hs))
    (got, got_stats), got_grads = grad()(y, hs)
  # Both heads' vocabularies (32, 12) split over `tensor`, as the parameters are.
  assert jaxpr.count("P('tensor', None)") >= 2, jaxpr[:2000]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6),
               (want_stats, want_grads), (got_stats, got_grads))
