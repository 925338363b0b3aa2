"""The training state, step and loop that every training job shares.

    tx, schedule = optim.make(...)
    state = engine.init_state(params, tx, extra=...)
    step = engine.make_train_step(loss_fn, tx, schedule=schedule)
    state, metrics = step(state, batch)          # state is donated
    out = engine.train_loop(state, step, batches, start=0, total=1000, log_every=50,
                            logger=logger, save=save, checkpoint_every=500)

A job supplies `loss_fn(params, extra, batch) -> (loss, (metrics, extra))`:
`params` are what the optimizer trains, `extra` the state the step carries
besides them (e.g. batch statistics; None when there is none), `batch`
anything else the step reads (not donated).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax import struct
from jax.experimental import multihost_utils

from m4 import sharding
from m4 import workdir


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


# ---------------------------------------------------------------------------
# The loop.


class Preemption:
  """Records a SIGTERM or a Ctrl-C; the loop acts on it at the end of a step.

  A SIGTERM checkpoints and stops. A Ctrl-C raises KeyboardInterrupt between
  steps, never inside a library's save or load (which may swallow it); a
  second Ctrl-C interrupts at once. With several processes they must stop at
  the same step: `stop_now` is asked at logging steps and is true on all
  processes when any of them got a SIGTERM.
  """

  def __init__(self):
    self.requested = False
    self.interrupted = False
    self._old = None

  def stop_now(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = (signal.signal(signal.SIGTERM, self._handle),
                   signal.signal(signal.SIGINT, self._interrupt))
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def _interrupt(self, signum, frame):
    del signum, frame
    self.interrupted = True
    signal.signal(signal.SIGINT, signal.default_int_handler)

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old[0])
      signal.signal(signal.SIGINT, self._old[1])


class Meter:
  """Per-step metrics kept on device until the next flush, then checked and averaged.

  `check(step, metrics)` (e.g. a divergence guard) sees every step's values.
  A metric "x/m" with a "tokens/m" beside it is averaged over tokens; the
  `sums` are added up over the interval, the rest averaged; "tokens/*" are
  dropped.
  """

  def __init__(self, check: Callable[[int, Mapping[str, float]], None] | None = None,
               sums: Sequence[str] = ()):
    self.check = check
    self.sums = tuple(sums)
    self.pending = []
    self.t0 = time.time()
    self.paused = 0.0  # Seconds of evaluation / checkpointing since t0.
    self.untimed = 0  # Steps since t0 that the rate leaves out (compilation).

  def add(self, step: int, metrics):
    self.pending.append((step, metrics))

  def restart_clock(self):
    """Times from now on: the steps so far (e.g. the compiling one) are not timed."""
    jax.block_until_ready(self.pending[-1][1])
    self.t0, self.paused, self.untimed = time.time(), 0.0, len(self.pending)

  def flush(self) -> tuple[int, dict[str, float]] | None:
    """(last step, mean metrics since the last flush, with `_steps` timed over
    `_seconds`); raises FloatingPointError(step, {name: value}) at the first
    non-finite value, or what `check` raises."""
    if not self.pending:
      return None
    steps = [s for s, _ in self.pending]
    values = jax.device_get([m for _, m in self.pending])
    for step, m in zip(steps, values):
      bad = {k: float(v) for k, v in m.items() if not np.all(np.isfinite(v))}
      if bad:
        raise FloatingPointError(step, bad)
      if self.check is not None:
        self.check(step, m)
    mean = {}
    for k in values[0]:
      weights = "tokens/" + k.split("/", 1)[1] if "/" in k else None
      if k.startswith("tokens/"):
        continue
      if weights in values[0]:  # Over the interval's tokens of that modality.
        tokens = np.array([m[weights] for m in values])
        if tokens.sum() > 0:
          mean[k] = float(np.sum(np.array([m[k] for m in values]) * tokens) / tokens.sum())
      elif k in self.sums:
        mean[k] = float(np.sum([m[k] for m in values]))
      else:
        mean[k] = float(np.mean([m[k] for m in values]))
    seconds = time.time() - self.t0 - self.paused
    timed = len(steps) - self.untimed
    self.pending, self.t0, self.paused, self.untimed = [], time.time(), 0.0, 0
    return steps[-1], dict(mean, _steps=timed, _seconds=seconds)


def non_finite(job: str, e: FloatingPointError, remedy: str, kept: str = "") -> FloatingPointError:
  """The job's one-line error for the loop's FloatingPointError(step, values)."""
  step, bad = e.args
  return FloatingPointError(f"{job}: non-finite values at step {step}: {bad}. Stopped without"
                            f" saving{'; ' + kept if kept else ''}. {remedy}")


def preempted(job: str, step: int, checkpoints: str | None) -> SystemExit:
  """The job's exit (status 1) after a SIGTERM stopped its loop at `step`."""
  saved = f"saved a checkpoint at step {step} in {checkpoints}" if checkpoints else (
      f"stopped at step {step}")
  return SystemExit(f"{job}: SIGTERM: {saved}; run the same command again to resume.")


@dataclasses.dataclass
class LoopResult:
  state: Any
  logged: dict  # The last metrics written.
  stopped_at: int | None  # The step a SIGTERM stopped at (after saving), else None.
  seconds: float  # Wall time of the loop.


def train_loop(state, step_fn: Callable, batches: Callable[[int], Any], *, start: int,
               total: int, log_every: int, logger: workdir.MetricLogger,
               summarize: Callable[[int, dict], dict] | None = None,
               save: Callable[[int, Any, dict], None] | None = None, checkpoint_every: int = 0,
               evals: Sequence[tuple[int, Callable[[int, Any], None]]] = (),
               meter: Meter | None = None) -> LoopResult:
  """Steps start + 1 .. total of `state, metrics = step_fn(state, batches(step))`.

  Every `log_every` steps (and at the last) the metrics since the last log
  are checked (non-finite values stop the run: FloatingPointError(step,
  values), before anything is saved) and averaged (`meter`), turned into what
  is logged by `summarize(step, means)` (default: the means), and written by
  `logger` (metrics.jsonl, TensorBoard, a progress line with steps/s and ETA).
  Every `checkpoint_every` steps and at the last, `save(step, state, logged)`.
  Each `(every, fn)` of `evals` runs `fn(step, state)` every `every` steps
  before the last (the job evaluates the final state itself). A SIGTERM
  saves at the end of the step it arrives in (on several processes: at the
  next logging step) and returns with `stopped_at`; a Ctrl-C raises
  KeyboardInterrupt at the end of its step, nothing saved. Time spent saving and
  evaluating is left out of the step rate.
  """
  meter = meter or Meter()
  summarize = summarize or (lambda step, means: {k: v for k, v in means.items()
                                                  if not k.startswith("_")})
  logged = {}
  t_start = time.time()

  def paused(fn, *args):
    t = time.time()
    fn(*args)
    meter.paused += time.time() - t

  def flush():
    out = meter.flush()
    if out is not None:
      logged.clear()
      logged.update(logger.write(out[0], summarize(out[0], out[1])))

  with Preemption() as preemption:
    for step in range(start + 1, total + 1):
      state, metrics = step_fn(state, batches(step))
      meter.add(step, metrics)
      if preemption.interrupted:
        raise KeyboardInterrupt
      if step == start + 1:
        meter.restart_clock()
      do_save = save is not None and checkpoint_every > 0 and (
          step % checkpoint_every == 0 or step == total)
      if step % log_every == 0 or step == total or do_save or (
          preemption.requested and jax.process_count() == 1):
        flush()  # Checks every step's values before anything is saved.
        if preemption.stop_now():
          if save is not None:
            paused(save, step, state, logged)
          return LoopResult(state, dict(logged), step, time.time() - t_start)
      if do_save:
        paused(save, step, state, logged)
      for every, fn in evals:
        if every and step % every == 0 and step != total:
          paused(fn, step, state)
  return LoopResult(state, dict(logged), None, time.time() - t_start)
