"""m4.engine: the shared train state and step, against a hand-written step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from m4 import engine
from m4 import optim


def _loss(params, extra, batch):
  x, y = batch
  err = x @ params["w"] + params["b"] - y
  loss = jnp.mean(err ** 2)
  return loss, ({"max_err": jnp.max(jnp.abs(err))}, {"seen": extra["seen"] + x.shape[0]})


def test_step_equals_a_hand_written_one_and_carries_extra():
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.zeros(2)}
  batches = [(jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
              jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)) for _ in range(3)]
  tx, schedule = optim.make(dict(lr=0.1, warmup_steps=1, decay_steps=5, clip_norm=1.0,
                                 weight_decay=0.1, decay_rules=(("w", True),)))
  want_params, want_opt = params, tx.init(params)
  state = engine.init_state(jax.tree.map(jnp.copy, params), tx, extra={"seen": jnp.int32(0)})
  step = engine.make_train_step(_loss, tx, schedule=schedule)

  @jax.jit
  def by_hand(params, opt_state, batch):
    (loss, _), grads = jax.value_and_grad(_loss, has_aux=True)(params, {"seen": 0}, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  for i, batch in enumerate(batches):
    state, metrics = step(state, batch)
    want_params, want_opt, loss, grads = by_hand(want_params, want_opt, batch)
    jax.tree.map(np.testing.assert_array_equal, state.params, want_params)
    assert float(metrics["loss"]) == float(loss)
    np.testing.assert_allclose(metrics["grad_norm"], optax.global_norm(grads), rtol=1e-6)
    np.testing.assert_allclose(metrics["param_norm"], optax.global_norm(want_params), rtol=1e-6)
    assert float(metrics["lr"]) == float(schedule(i)) and "max_err" in metrics
  assert int(state.step) == 3 and int(state.extra["seen"]) == 12
  no_norm = engine.make_train_step(_loss, tx, param_norm=False)
  _, metrics = no_norm(state, batches[0])
  assert set(metrics) == {"max_err", "loss", "grad_norm"}
