"""m4.engine: the shared train state and step, against a hand-written step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


def _loop_setup():
  rng = np.random.default_rng(1)
  data = [(jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
           jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)) for _ in range(10)]
  tx, _ = optim.make(dict(lr=0.05, warmup_steps=0, decay_steps=10))
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
  state = engine.init_state(params, tx, extra={"seen": jnp.int32(0)})
  return data, engine.make_train_step(_loss, tx), state


def test_loop_logs_interval_means_saves_and_evaluates(tmp_path):
  from m4 import workdir  # pylint: disable=g-import-not-at-top
  data, step, state = _loop_setup()
  per_step = []
  saved, evaluated = [], []

  def recording_step(state, batch):
    state, metrics = step(state, batch)
    per_step.append(float(metrics["loss"]))
    return state, metrics

  with workdir.MetricLogger(str(tmp_path), 10, quiet=True, tensorboard=False) as logger:
    out = engine.train_loop(state, recording_step, lambda s: data[s - 1], start=0, total=10,
                            log_every=4, logger=logger, checkpoint_every=5,
                            save=lambda s, st, logged: saved.append((s, logged.get("loss"))),
                            evals=[(3, lambda s, st: evaluated.append(s))])
  rows = workdir.read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [4, 5, 8, 10]  # log_every, checkpoints, the last.
  np.testing.assert_allclose([r["loss"] for r in rows],
                             [np.mean(per_step[0:4]), per_step[4], np.mean(per_step[5:8]),
                              np.mean(per_step[8:10])], rtol=1e-6)
  assert [s for s, _ in saved] == [5, 10] and saved[0][1] == rows[1]["loss"]
  assert evaluated == [3, 6, 9] and out.stopped_at is None
  assert int(out.state.step) == 10 and len(per_step) == 10


def test_loop_stops_at_the_first_non_finite_step_before_saving(tmp_path):
  from m4 import workdir  # pylint: disable=g-import-not-at-top
  data, step, state = _loop_setup()
  data[6] = (data[6][0] * jnp.nan, data[6][1])
  saved = []
  with workdir.MetricLogger(str(tmp_path), 10, quiet=True, tensorboard=False) as logger:
    with pytest.raises(FloatingPointError) as e:
      engine.train_loop(state, step, lambda s: data[s - 1], start=0, total=10, log_every=4,
                        logger=logger, checkpoint_every=8,
                        save=lambda s, st, logged: saved.append(s))
  assert e.value.args[0] == 7 and "loss" in e.value.args[1]
  assert saved == [] and [r["step"] for r in workdir.read_metrics(str(tmp_path))] == [4]


def test_loop_saves_and_stops_on_sigterm(tmp_path):
  import os  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  from m4 import workdir  # pylint: disable=g-import-not-at-top
  data, step, state = _loop_setup()

  def batches(s):
    if s == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return data[s - 1]

  saved = []
  with workdir.MetricLogger(str(tmp_path), 10, quiet=True, tensorboard=False) as logger:
    out = engine.train_loop(state, step, batches, start=0, total=10, log_every=5, logger=logger,
                            checkpoint_every=5, save=lambda s, st, logged: saved.append(s))
  assert out.stopped_at == 3 and saved == [3] and int(out.state.step) == 3
