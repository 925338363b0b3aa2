"""orbax checkpoints of state + grain iterator: exact round trips."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from m4 import checkpoints


class _Tiny(nnx.Module):

  def __init__(self, rngs):
    self.dense = nnx.Linear(3, 4, rngs=rngs)
    self.norm = nnx.LayerNorm(4, rngs=rngs)


def _iterator():
  ds = grain.MapDataset.range(100).shuffle(seed=3).map(lambda i: np.int64(i) * 2)
  return iter(ds.to_iter_dataset())


def test_state_and_iterator_round_trip(tmp_path):
  model = _Tiny(nnx.Rngs(0))
  state = {"model": nnx.state(model, nnx.Param), "step": jnp.int32(7)}
  it = _iterator()
  [next(it) for _ in range(5)]
  with checkpoints.Checkpointer(str(tmp_path / "ck"), async_save=False) as ck:
    ck.save(7, state, data_iter=it, meta={"note": "x"})
  expected_next = [next(it) for _ in range(4)]

  fresh_model = _Tiny(nnx.Rngs(1))
  target = {"model": nnx.state(fresh_model, nnx.Param), "step": jnp.int32(0)}
  it2 = _iterator()
  with checkpoints.Checkpointer(str(tmp_path / "ck")) as ck:
    assert ck.latest_step() == 7
    restored, meta = ck.restore(target, data_iter=it2)
  assert meta["note"] == "x" and meta["step"] == 7
  assert [next(it2) for _ in range(4)] == expected_next
  want = nnx.to_pure_dict(state["model"])
  assert isinstance(restored["model"], nnx.State)
  jax.tree.map(np.testing.assert_array_equal, want, nnx.to_pure_dict(restored["model"]))
  assert int(restored["step"]) == 7


def test_optimizer_states_are_stored_as_pure_dicts_and_come_back_as_states(tmp_path):
  params = nnx.state(_Tiny(nnx.Rngs(0)), nnx.Param)
  opt = optax.adam(1e-3).init(params)
  opt = jax.tree.map(lambda x: x + 1, opt)
  pure = checkpoints.to_pure({"opt": opt})
  assert isinstance(pure["opt"][0].mu, dict) and "dense/kernel" in checkpoints._leaves(pure["opt"][0].mu)  # pylint: disable=protected-access
  back = checkpoints.from_pure({"opt": opt}, pure)
  assert isinstance(back["opt"][0].mu, nnx.State)
  assert jax.tree.structure(back) == jax.tree.structure({"opt": opt})
  with checkpoints.Checkpointer(str(tmp_path / "ck"), async_save=False) as ck:
    ck.save(1, {"opt": opt})
    stored = checkpoints._leaves(ck.stored_state(1))  # pylint: disable=protected-access
    assert "opt/0/mu/dense/kernel" in stored  # Not ".../kernel/value": pure dicts.
    target = {"opt": optax.adam(1e-3).init(params)}
    restored, _ = ck.restore(target)
  assert isinstance(restored["opt"][0].mu, nnx.State)
  jax.tree.map(np.testing.assert_array_equal, restored, {"opt": opt})


def test_restore_subtree_reads_only_the_model(tmp_path):
  model = _Tiny(nnx.Rngs(0))
  state = {"model": nnx.state(model, nnx.Param), "opt": {"mu": jnp.ones((1000,))}}
  with checkpoints.Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False) as ck:
    ck.save(3, state)
  target = nnx.to_pure_dict(nnx.state(_Tiny(nnx.Rngs(5)), nnx.Param))
  got = checkpoints.restore_subtree(str(tmp_path / "run"), target, key="model")
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(state["model"]), got)
  with pytest.raises(KeyError, match="nothere"):
    checkpoints.restore_subtree(str(tmp_path / "run"), target, key="nothere")
  with pytest.raises(FileNotFoundError, match="no orbax checkpoints"):
    checkpoints.find_directory(str(tmp_path))
