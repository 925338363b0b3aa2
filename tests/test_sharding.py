"""Mesh from config, logical rules, and parameter/batch shardings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m4 import sharding


class _Mlp(nnx.Module):

  def __init__(self, rngs):
    init = nnx.initializers.lecun_normal()
    self.w1 = nnx.Param(nnx.with_partitioning(init, ("embed", "mlp"))(rngs.params(), (16, 32)))
    self.w2 = nnx.Param(nnx.with_partitioning(init, ("mlp", "embed"))(rngs.params(), (32, 16)))

  def __call__(self, x):
    h = sharding.constrain(x @ self.w1, ("batch", "mlp"))
    return h @ self.w2


def test_make_mesh_fills_and_validates():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="config.mesh"):
    sharding.make_mesh({"data": 3})
  with pytest.raises(ValueError, match="unknown axes"):
    sharding.make_mesh({"model": 2})


def test_logical_to_spec_uses_each_mesh_axis_once():
  rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"))
  assert sharding.logical_to_spec(("batch", "embed"), rules) == jax.sharding.PartitionSpec(
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
