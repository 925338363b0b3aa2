"""4M pretraining: the optimizer and the jitted training step.

    tx, schedule = make_optimizer(config.optimizer, config.total_steps, model)
    state = init_state(model, tx)
    step = make_train_step(nnx.graphdef(model), tx, schedule=schedule)
    state, metrics = step(state, batch)          # state is donated

The loop around it (data, checkpoints, evaluation) is added by the
pretraining trainer; `python -m m4.tools.bench_train` times this step.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax import struct

from m4 import sharding
from m4 import workdir

OPTIMIZER_FIELDS = ("lr", "warmup_steps", "final_lr_ratio", "b1", "b2", "eps",
                    "weight_decay", "clip_norm")


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # nnx.State of the model's nnx.Param variables.
  opt_state: Any


def make_optimizer(opt: Mapping[str, Any], total_steps: int, model):
  """AdamW with linear warmup + cosine decay, global-norm gradient clipping,
  and weight decay on linear-layer matrices only (`model.decay_mask()`).

  Args:
    opt: config.optimizer with fields OPTIMIZER_FIELDS.
    total_steps: length of the schedule.
    model: the FourM (or an abstract one from nnx.eval_shape).

  Returns:
    (optax transformation, learning-rate schedule).
  """
  opt = dict(opt.to_dict() if hasattr(opt, "to_dict") else opt)
  missing = [f for f in OPTIMIZER_FIELDS if f not in opt]
  workdir.require(not missing, "optimizer", f"missing fields {missing}.")
  unknown = sorted(set(opt) - set(OPTIMIZER_FIELDS))
  workdir.require(not unknown, "optimizer", f"unknown fields {unknown}; known {OPTIMIZER_FIELDS}.")
  workdir.require(0 <= opt["warmup_steps"] < max(total_steps, 1), "optimizer.warmup_steps",
                  f"must be in [0, total_steps={total_steps}).")
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt["lr"], warmup_steps=int(opt["warmup_steps"]),
      decay_steps=max(int(total_steps), 1), end_value=opt["lr"] * opt["final_lr_ratio"])
  mask = model.decay_mask()

  def decay_mask(params):  # The same tree as `params` (State or pure dict).
    def leaf(path, _):
      node = mask
      for k in path:
        if isinstance(k, jax.tree_util.DictKey):
          node = node[k.key]
      return node
    return jax.tree_util.tree_map_with_path(leaf, params)

  tx = optax.chain(
      optax.clip_by_global_norm(opt["clip_norm"]),
      optax.adamw(schedule, b1=opt["b1"], b2=opt["b2"], eps=opt["eps"],
                  weight_decay=opt["weight_decay"], mask=decay_mask))
  return tx, schedule


def init_state(model, tx) -> TrainState:
  """Step 0 of training: the model's parameters and fresh optimizer state.

  The state holds the model's own arrays, which the first step donates.
  """
  params = nnx.state(model, nnx.Param)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=jax.jit(tx.init)(params))


def make_train_step(graphdef, tx, *, schedule=None, mesh=None,
                    rules=sharding.DEFAULT_RULES, state_shardings=None):
  """A jitted `step(state, batch) -> (state, metrics)`; `state` is donated.

  With a `mesh`, the step runs under `sharding.use(mesh, rules)` and keeps
  the state in `state_shardings` (e.g. from `train_state_shardings`).
  """

  def loss_fn(params, batch):
    model = nnx.merge(graphdef, params)
    return model(batch)

  def step(state: TrainState, batch):
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads))
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

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
  """NamedShardings of a TrainState: parameters and their optimizer moments by
  the parameters' logical names, everything else replicated."""
  params = sharding.state_shardings(state.params, mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def like_params(x):
    if isinstance(x, nnx.State):
      return params
    return jax.tree.map(lambda _: replicated, x)

  opt = jax.tree.map(like_params, state.opt_state, is_leaf=lambda x: isinstance(x, nnx.State))
  return TrainState(step=replicated, params=params, opt_state=opt)
