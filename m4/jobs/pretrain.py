"""4M pretraining: masked multimodal modeling on token batches, on a device mesh.

    python -m m4.main --config=configs/pretrain/scenes_tiny.py --workdir=DIR

The loop, in the style of big_vision's train.py: masked token batches
(`m4.data.pretrain_data`: token shards or on-the-fly tokenization -> 4M
masking -> grain, process-sharded) -> global arrays on the mesh -> a jitted,
donated AdamW step with explicit state shardings -> metrics every
`log_every` steps (metrics.jsonl, TensorBoard, a progress line with ETA),
held-out evaluation every `eval.every` steps (`m4.jobs.pretrain_eval`),
orbax checkpoints of model, optimizer and data iterator every
`checkpoint_every` steps. Running the same command on the same workdir
resumes from the last checkpoint and continues with exactly the losses of an
uninterrupted run (same data, masks and, on CPU, numerics); a checkpoint that
cannot be read is skipped (and moved aside) for the newest one that can, and
a workdir whose checkpoints hold another model is refused before anything is
written. SIGTERM saves a checkpoint, then exits (status 1) asking to re-run;
a non-finite loss, gradient or parameter norm, or a divergence (a loss or
gradient-norm spike against the running median, `divergence`), stops the run
naming the first bad step, without saving: the latest checkpoint is the last
healthy one.

The pieces (`m4.engine`'s, with the FourM's loss), also used by
`m4.tools.bench_train` (which times this step):

    tx, schedule = make_optimizer(config.optimizer, config.total_steps, model)
    state = init_state(model, tx)
    step = make_train_step(nnx.graphdef(model), tx, schedule=schedule)
    state, metrics = step(state, batch)          # state is donated

Config fields (configs/pretrain/*.py set them all):
  seed: data order, masks and initialisation derive from it.
  modalities: registry entries to add (name -> Modality fields); {} for the
    embedded rgb / depth / semseg / caption.
  data: `m4.data.pipeline.data_config` (batch_size is global; on-the-fly
    tokenization reads the raw data and its crop settings from here).
  tokens: source ("shards" | "on_the_fly"), dir (the shards).
  tokenizers: {image modality: VQ tokenizer name or directory}; must be the
    ones the shards were made with.
  masking: `m4.data.masking` (4M-7 mixture by default; condition_dropout).
  model: `m4.models.configs.FourMConfig` fields (+ optional `size` preset);
    num_encoder_tokens / num_decoder_tokens must equal the masking totals.
  optimizer: lr, warmup_steps, final_lr_ratio, b1, b2, eps, weight_decay,
    clip_norm (AdamW, warmup + cosine, no decay on norms / biases /
    embeddings, global-norm clipping).
  total_steps, log_every, checkpoint_every, keep_checkpoints.
  eval: every, split, batch_size, num_batches (0: the whole split),
    baseline_batches (training batches the constant baselines are fitted
    on; 0: all), grid_samples, cross_modal {inputs, targets}.
  mesh, sharding_rules: `m4.sharding`.
  init: "" or the directory of a pretraining run or saved / converted model
    whose parameters start this run (`m4.checkpoints.restore_subtree`).
  tensorboard: write TensorBoard events besides metrics.jsonl.
  divergence: loss_factor, grad_norm_factor (a step whose train loss /
    gradient norm exceeds this factor times the median of the previous
    `window` steps stops the run; 0 turns the check off), window, min_steps
    (steps of history before checking).

Writes DIR/metrics.jsonl (train/*, val/*, cross_modal/*, baseline/*),
DIR/checkpoints/, DIR/curves.png, DIR/predictions.png, DIR/eval/final.json.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from flax import nnx

from m4 import checkpoints
from m4 import engine
from m4 import modalities
from m4 import optim
from m4 import sharding
from m4 import workdir
from m4.data import pretrain_data
from m4.models import configs
from m4.models import fourm
from m4.models import pretrained
from m4.jobs import pretrain_eval

TrainState = engine.TrainState
train_state_shardings = engine.train_state_shardings
OPTIMIZER_FIELDS = ("lr", "warmup_steps", "final_lr_ratio", "b1", "b2", "eps",
                    "weight_decay", "clip_norm")
DIVERGENCE_FIELDS = ("loss_factor", "grad_norm_factor", "window", "min_steps")


def make_optimizer(opt: Mapping[str, Any], total_steps: int, model):
  """AdamW with linear warmup + cosine decay, global-norm gradient clipping,
  and weight decay on linear-layer matrices only (`model.decay_rules()`), by
  `m4.optim.make`.

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
  return optim.make(dict(
      lr=opt["lr"], warmup_steps=int(opt["warmup_steps"]), decay_steps=max(int(total_steps), 1),
      end_lr=opt["lr"] * opt["final_lr_ratio"], b1=opt["b1"], b2=opt["b2"], eps=opt["eps"],
      weight_decay=opt["weight_decay"], clip_norm=opt["clip_norm"],
      decay_rules=model.decay_rules()))


def init_state(model, tx) -> TrainState:
  """Step 0 of training: the model's parameters and fresh optimizer state.

  The state holds the model's own arrays, which the first step donates.
  """
  return engine.init_state(nnx.state(model, nnx.Param), tx)


def make_train_step(graphdef, tx, *, schedule=None, mesh=None,
                    rules=sharding.DEFAULT_RULES, state_shardings=None):
  """`engine.make_train_step` with the FourM's masked-modeling loss."""

  def loss_fn(params, extra, batch):
    loss, metrics = nnx.merge(graphdef, params)(batch)
    return loss, (metrics, extra)

  return engine.make_train_step(loss_fn, tx, schedule=schedule, mesh=mesh, rules=rules,
                                state_shardings=state_shardings)


# ---------------------------------------------------------------------------
# The training job.


def to_checkpoint(state: TrainState) -> dict:
  """What a checkpoint holds: {"model": parameters, "opt_state", "step"}.

  "model" is what `m4.checkpoints.restore_subtree(run_dir, ...)` reads; the
  Checkpointer stores nnx.States as pure dicts (`m4.checkpoints.to_pure`).
  """
  return {"model": state.params, "opt_state": state.opt_state, "step": state.step}


def from_checkpoint(tree: Mapping[str, Any]) -> TrainState:
  """The inverse of `to_checkpoint` (of a tree the Checkpointer restored)."""
  return TrainState(step=tree["step"], params=tree["model"], opt_state=tree["opt_state"])


def _with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def _check_config(config, cfg) -> None:
  require = workdir.require
  for k in ("total_steps", "log_every", "checkpoint_every"):
    require(int(config[k]) >= 1, k, f"must be >= 1, got {config[k]}.")
  m = config.masking
  require(int(m.num_input_tokens) == cfg.num_encoder_tokens, "model.num_encoder_tokens",
          f"{cfg.num_encoder_tokens} slots, but config.masking.num_input_tokens is"
          f" {m.num_input_tokens}; make them equal.")
  require(int(m.num_target_tokens) == cfg.num_decoder_tokens, "model.num_decoder_tokens",
          f"{cfg.num_decoder_tokens} slots, but config.masking.num_target_tokens is"
          f" {m.num_target_tokens}; make them equal.")
  for c, comp in m.mixture.items():
    for key, field, names in (("input_alphas", "encoder_modalities", cfg.encoder_modalities),
                              ("target_alphas", "decoder_modalities", cfg.decoder_modalities)):
      for n, alpha in comp[key].items():
        require(float(alpha) == 0 or n in names, f"model.{field}",
                f"config.masking.mixture.{c}.{key} gives {n!r} alpha {alpha}, but it is not"
                f" one of {names}.")


class Diverged(FloatingPointError):
  """A loss or gradient-norm spike; args: (step, metric, value, median, factor, steps)."""


class DivergenceGuard:
  """Stops at the first step whose train loss or gradient norm exceeds
  `factor` times the median of the previous `window` steps (`config.divergence`,
  DIVERGENCE_FIELDS)."""

  def __init__(self, settings: Mapping[str, Any]):
    s = dict(settings.to_dict() if hasattr(settings, "to_dict") else settings)
    unknown = sorted(set(s) - set(DIVERGENCE_FIELDS))
    workdir.require(not unknown, "divergence",
                    f"unknown fields {unknown}; known {list(DIVERGENCE_FIELDS)}.")
    missing = [k for k in DIVERGENCE_FIELDS if k not in s]
    workdir.require(not missing, "divergence", f"missing fields {missing}.")
    for k in ("loss_factor", "grad_norm_factor"):
      workdir.require(float(s[k]) == 0 or float(s[k]) > 1, f"divergence.{k}",
                      f"must be 0 (off) or > 1, got {s[k]}.")
    for k in ("window", "min_steps"):
      workdir.require(int(s[k]) >= 1, f"divergence.{k}", f"must be >= 1, got {s[k]}.")
    self.factors = {"loss": float(s["loss_factor"]), "grad_norm": float(s["grad_norm_factor"])}
    self.min_steps = int(s["min_steps"])
    self.history = {k: collections.deque(maxlen=int(s["window"])) for k in self.factors}

  def seed(self, rows) -> None:
    """History from logged rows (a resumed run: metrics.jsonl up to its step)."""
    for r in rows:
      if "train/loss" in r and "grad_norm" in r:
        self.history["loss"].append(float(r["train/loss"]))
        self.history["grad_norm"].append(float(r["grad_norm"]))

  def check(self, step: int, metrics: Mapping[str, float]) -> None:
    for k, factor in self.factors.items():
      value, history = float(metrics[k]), self.history[k]
      if factor and len(history) >= self.min_steps:
        median = float(np.median(history))
        if median > 0 and value > factor * median:
          raise Diverged(step, k, value, median, factor, len(history))
      history.append(value)


def _train_metrics(mean: Mapping[str, float], tokens_per_step: int) -> dict[str, float]:
  """Logged names: headline figures first (the progress line shows six)."""
  out = {"train/loss": mean["loss"], "lr": mean.get("lr", float("nan")),
         "grad_norm": mean["grad_norm"]}
  if mean["_steps"] > 0:  # Not when the interval holds only the compiling step.
    rate = mean["_steps"] / max(mean["_seconds"], 1e-9)
    out.update(tokens_per_sec=rate * tokens_per_step, train_steps_per_sec=rate)
  for k in sorted(mean):
    if k.startswith(("loss/", "accuracy/")):
      out[f"train/{k}"] = mean[k]
  out["param_norm"] = mean["param_norm"]
  return out


# Cross-modal figures in the summary (all of them are in eval/final.json).
_SUMMARY_FIGURES = ("/accuracy", "/miou", "/delta1", "/abs_rel")


def run(config, workdir_path: str) -> dict:
  """Pretrains (or resumes) in `workdir_path`; returns the summary."""
  t_start = time.time()
  try:
    modalities.register_from_config(config.modalities)
  except ValueError as e:
    raise workdir.ConfigError(f"config.modalities: {e}") from None
  cfg = configs.from_config(config.model)
  cfg.check_modalities()
  _check_config(config, cfg)
  mesh = sharding.make_mesh(config.mesh)  # A ConfigError naming config.mesh.
  rules = sharding.rules_from_config(config.sharding_rules)
  shards = sharding.num_batch_shards(mesh, rules)
  workdir.require(int(config.data.batch_size) % shards == 0, "data.batch_size",
                  f"{config.data.batch_size} does not split over the {shards} batch shards of"
                  f" the mesh {dict(mesh.shape)}.")
  data = pretrain_data.PretrainData(config)
  total = int(config.total_steps)

  # Model, optimizer and their shardings, all abstract until placed.
  make_model = lambda: fourm.FourM(cfg, rngs=nnx.Rngs(int(config.seed)))
  abstract_model = nnx.eval_shape(make_model)
  graphdef = nnx.graphdef(abstract_model)
  tx, schedule = make_optimizer(config.optimizer, total, abstract_model)
  abstract = jax.eval_shape(lambda: init_state(make_model(), tx))
  shardings = train_state_shardings(abstract, mesh, rules)
  target = _with_shardings(abstract, shardings)

  workdir.require_fields(config, ("divergence",), "configs/pretrain/scenes_tiny.py")
  guard = DivergenceGuard(config.divergence)
  ckpt = checkpoints.Checkpointer(os.path.join(workdir_path, "checkpoints"),
                                  max_to_keep=int(config.keep_checkpoints))
  with ckpt:  # Closed (orbax threads stopped) however the run ends.
    return _train(config, workdir_path, ckpt, guard, data=data, cfg=cfg, target=target,
                  shardings=shardings, mesh=mesh, rules=rules, tx=tx, schedule=schedule,
                  graphdef=graphdef, make_model=make_model, t_start=t_start)


def _resume(ckpt, target, train_it, workdir_path: str):
  """(state, step) of the newest readable checkpoint, or None; a checkpoint of
  another model is refused (ConfigError) before anything is written."""
  try:
    resumed = ckpt.restore_latest(to_checkpoint(target), data_iter=train_it)
  except workdir.ConfigError as e:
    raise workdir.ConfigError(
        f"{workdir_path} holds a run the config does not match: {e} Use a new workdir, or the"
        f" config the run was made with ({os.path.join(workdir_path, 'config.json')}).") from None
  if resumed is None:
    return None
  tree, meta, step = resumed
  logging.info("pretrain: resumed from step %d (%s)", step, meta)
  return from_checkpoint(tree), step


def _train(config, workdir_path, ckpt, guard, *, data, cfg, target, shardings, mesh, rules, tx,
           schedule, graphdef, make_model, t_start) -> dict:
  """The run from (resumed or fresh) state to the summary."""
  total = int(config.total_steps)
  train_it = data.train_iterator(seed=int(config.seed))
  resumed = _resume(ckpt, target, train_it, workdir_path)
  if resumed is not None:
    state, start = resumed
    guard.seed(r for r in workdir.read_metrics(workdir_path) if r.get("step", 0) <= start)
  else:
    start = 0
    params = None
    if config.init:
      try:
        params = checkpoints.restore_subtree(config.init, target.params, key="model")
      except (FileNotFoundError, KeyError, ValueError) as e:
        raise workdir.ConfigError(f"config.init: cannot read model parameters from"
                                  f" {config.init!r}: {e}") from None
    with sharding.use(mesh, rules):
      state = jax.jit(lambda: init_state(make_model(), tx), out_shardings=shardings)()
    if params is not None:
      state = state.replace(params=params)
      logging.info("pretrain: parameters initialised from %s", config.init)
  evaluator = pretrain_eval.PretrainEval(config, data, graphdef, mesh, rules)
  # Everything is checked: from here on the run writes.
  workdir.write_config(config, workdir_path)
  workdir.write_json(os.path.join(workdir_path, pretrained.MODEL_FILE),
                     pretrained.model_config_dict(cfg))

  step_fn = make_train_step(graphdef, tx, schedule=schedule, mesh=mesh, rules=rules,
                            state_shardings=shardings)
  names = data.names
  tokens_per_step = int(config.data.batch_size) * (cfg.num_encoder_tokens + cfg.num_decoder_tokens)
  logger = workdir.MetricLogger(workdir_path, total, name="pretrain",
                                tensorboard=bool(config.tensorboard))
  with logger:
    return _loop(config, workdir_path, ckpt, logger, engine.Meter(guard.check), state=state,
                 start=start, train_it=train_it, step_fn=step_fn, evaluator=evaluator,
                 names=names, tokens_per_step=tokens_per_step, mesh=mesh, rules=rules, cfg=cfg,
                 t_start=t_start)


def _stopped(e: FloatingPointError, ckpt) -> FloatingPointError:
  """The one-line message of a non-finite or diverged step."""
  try:
    ckpt.wait()
    last = ckpt.latest_step()
  except OSError:
    last = None
  kept = (f"the last healthy checkpoint is step {last} in {ckpt.directory}" if last is not None
          else "no checkpoint was saved before it")
  if isinstance(e, Diverged):
    step, key, value, median, factor, n = e.args
    what = (f"divergence at step {step}: {'train loss' if key == 'loss' else 'gradient norm'}"
            f" {value:.4g} is {value / median:.3g} times the median {median:.4g} of the {n}"
            f" steps before (config.divergence.{key}_factor = {factor:g})")
    return Diverged(f"pretrain: {what}. Stopped without saving; {kept}. Lower optimizer.lr or"
                    " raise warmup_steps, then re-run to resume from it.")
  return engine.non_finite("pretrain", e, "Lower optimizer.lr or raise warmup_steps, then"
                           " re-run to resume from it.", kept.replace("healthy", "good"))


def _loop(config, workdir_path, ckpt, logger, meter, *, state, start, train_it, step_fn,
          evaluator, names, tokens_per_step, mesh, rules, cfg, t_start) -> dict:
  """Training steps, checkpoints and evaluations, then the final evaluation."""
  total = int(config.total_steps)

  def save(step, state, logged):
    ckpt.save(step, to_checkpoint(state), data_iter=train_it,
              meta={"train_loss": logged.get("train/loss")})

  def evaluate(step, state, final=False):
    m = {f"val/{k}": v for k, v in evaluator.held_out(state.params).items()}
    if final or config.eval.cross_modal_every_eval:
      m.update({f"cross_modal/{k}": v for k, v in evaluator.cross_modal(state.params).items()})
      m.update({f"baseline/{k}": v for k, v in evaluator.baseline().items()})
    logger.write(step, m, progress=True)
    return m

  def batch(step):
    del step
    return sharding.to_global(pretrain_eval.model_batch(next(train_it), names), mesh, rules)

  try:
    out = engine.train_loop(
        state, step_fn, batch, start=start, total=total, log_every=int(config.log_every),
        logger=logger, summarize=lambda step, mean: _train_metrics(mean, tokens_per_step),
        save=save, checkpoint_every=int(config.checkpoint_every),
        evals=[(int(config.eval.every), evaluate)], meter=meter)
  except FloatingPointError as e:
    raise _stopped(e, ckpt) from None
  state, last_train = out.state, out.logged
  ckpt.wait()
  if out.stopped_at is not None:
    ckpt.close()
    logger.close()
    raise engine.preempted("pretrain", out.stopped_at, ckpt.directory)

  final = evaluate(total, state, final=True)
  pictures = {
      "curves": pretrain_eval.plot_curves(workdir_path, os.path.join(workdir_path, "curves.png")),
      "predictions": evaluator.prediction_grid(
          state.params, os.path.join(workdir_path, "predictions.png"),
          int(config.eval.grid_samples)) if int(config.eval.grid_samples) else None,
  }
  ckpt.close()
  logger.close()
  summary = {
      "steps": total, "resumed_from": start or None,
      "params_m": round(configs.count_params(state.params) / 1e6, 2),
      "train_loss": last_train.get("train/loss"), "val_loss": final.get("val/loss"),
      "cross_modal": {k.split("/", 1)[1]: round(v, 4) for k, v in final.items()
                      if k.startswith("cross_modal/") and k.endswith(_SUMMARY_FIGURES)},
      "baseline_best": {k.split("/")[1]: round(v, 4) for k, v in final.items()
                        if k.startswith("baseline/") and k.endswith("/best")},
      "tokens_per_sec": last_train.get("tokens_per_sec"),
      "seconds": round(time.time() - t_start, 1),
      **{k: v for k, v in pictures.items() if v},
  }
  if jax.process_index() == 0:
    workdir.write_json(os.path.join(workdir_path, "eval", "final.json"), {**final, **summary})
  return summary
