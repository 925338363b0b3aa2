"""The training state and step that every training job shares.

    tx, schedule = optim.make(...)
    state = engine.init_state(params, tx, extra=...)
    step = engine.make_train_step(loss_fn, tx, schedule=schedule)
    state, metrics = step(state, batch)          # state is donated

A job supplies `loss_fn(params, extra, batch) -> (loss, (metrics, extra))`:
`params` are what the optimizer trains, `extra` the state the step carries
besides them (e.g. batch statistics; None when there is none), `batch`
anything else the step reads (not donated).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax import struct

from m4 import sharding


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # What the optimizer trains: an nnx.State or a pure dict.
  opt_state: Any
  extra: Any = None  # State the loss function updates (batch statistics); None: none.


def init_state(params, tx, extra=None) -> TrainState:
  """Step 0: `params`, fresh optimizer state and `extra`. The state holds the
  given arrays, which the first step donates."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=jax.jit(tx.init)(params), extra=extra)


def make_train_step(loss_fn: Callable, tx, *, schedule=None, param_norm: bool = True, mesh=None,
                    rules=sharding.DEFAULT_RULES, state_shardings=None):
  """A jitted `step(state, batch) -> (state, metrics)`; `state` is donated.

  metrics: the loss function's, with loss, grad_norm, param_norm (when
  `param_norm`) and lr (with a `schedule`). With a `mesh`, the step runs
  under `sharding.use(mesh, rules)` and keeps the state in
  `state_shardings` (e.g. from `train_state_shardings`).
  """

  def step(state: TrainState, batch):
    (loss, (metrics, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.extra, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    if param_norm:
      metrics["param_norm"] = optax.global_norm(params)
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      extra=extra), metrics

  if mesh is None:
    return jax.jit(step, donate_argnums=(0,))
  jitted = jax.jit(step, donate_argnums=(0,), out_shardings=(state_shardings, None))

  def sharded_step(state, batch):
    with sharding.use(mesh, rules):
      return jitted(state, batch)

  sharded_step.lower = lambda *a: _lower_in(mesh, rules, jitted, *a)
  return sharded_step


def _lower_in(mesh, rules, jitted, *args):
  with sharding.use(mesh, rules):
    return jitted.lower(*args)


def train_state_shardings(state: TrainState, mesh, rules=sharding.DEFAULT_RULES):
  """NamedShardings of a TrainState whose params are an nnx.State: parameters
  and their optimizer moments by the parameters' logical names, everything
  else replicated."""
  params = sharding.state_shardings(state.params, mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def like_params(x):
    if isinstance(x, nnx.State):
      return params
    return jax.tree.map(lambda _: replicated, x)

  opt = jax.tree.map(like_params, state.opt_state, is_leaf=lambda x: isinstance(x, nnx.State))
  extra = jax.tree.map(lambda _: replicated, state.extra)
  return TrainState(step=replicated, params=params, opt_state=opt, extra=extra)
