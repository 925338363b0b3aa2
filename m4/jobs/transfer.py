"""The `transfer` job: downstream tasks on a 4M encoder, beside honest baselines.

    python -m m4.main --config=configs/transfer/scenes.py --workdir=DIR --config.init=PRETRAIN_DIR

For every task x label fraction x seed, the job trains each init ("pretrained":
the encoder of the checkpoint at `config.init`, read with
m4.checkpoints.restore_subtree; "scratch": the same encoder randomly
initialised) with each protocol ("probe": frozen encoder, trained head;
"finetune": everything trained, layer-wise learning-rate decay) and, with
`baselines=("convnet",)`, a supervised conv net trained from scratch on the
same labels (protocol "supervised", m4.models.convnet). With a sweep
(`sweep.learning_rates`), every arm first tries each learning rate on its
first seed, scored on `sweep.split` (validation), and keeps the best: the
scratch arm is tuned exactly as the pretrained one; that first seed's final
run is the chosen sweep run's model (identical training), not a second
training of it. Each run is evaluated on the held-out split
`data.eval_split`, and the job writes

    DIR/runs/<task>/<run>/     metrics.jsonl, TensorBoard, checkpoints/ (if enabled)
    DIR/eval/<run>.json        the run's test metrics and settings
    DIR/eval/results.md        the table: scratch and pretrained side by side, the
                               baselines, the sweep's figures
    DIR/eval/sweep/<run>.json  each sweep run's validation metrics
    DIR/eval/results.json      every run's result
    DIR/eval/results.png       the headline metrics as bars
    DIR/eval/<task>_<budget>_predictions.png   dense tasks: inputs, labels and each
                                                run's predictions on test samples

Where the training crop is fixed up to a flip (the scenes configs), a run of
a protocol in `cached_views` trains on both views of every labelled sample
made once (m4.jobs.view_cache: the same distribution of inputs, without
reading a batch per step): a probe on the frozen encoder's features (encoded
once per arm), a fine-tuning or conv net on the encoder's batches (made once
per label subset). The run's result says which (`train_inputs`: "cached
features", "cached views" or "loader"); with random crops every batch comes
from the loader.

A run whose eval json exists is skipped, and a run with checkpoints resumes,
so the same command continues an interrupted job. Paired runs share the label
subset, the data order and the head's initialisation (all from the seed).

Config fields (configs/transfer/scenes.py documents a full example; each
protocol's fields are configs/transfer/common.py:protocol's):
  seeds: seeds to run; each gives the label subset, data order and inits.
  init: directory of a pretraining run or a saved model (m4.models.pretrained
    layout: config.json with `model` [+ `modalities`], checkpoints/); "" when
    only "scratch" runs. init_key: the checkpoint key of the model's state.
    init_step: the checkpoint step (-1: latest).
  model: FourMConfig fields: the architecture when `init` is "" (then with
    `size` and encoder/decoder modalities), else overrides that keep the
    parameters (dtype, remat, attention_impl).
  inits, protocols, label_fractions: what to run.
  baselines: () or ("convnet",); baseline_fractions: their label fractions
    (empty: label_fractions); supervised: the conv net's settings (as a
    protocol's, plus `width` and `stem`: its first level's pixels per
    position).
  sweep: split (where the sweep scores, never the test split) and
    learning_rates.<protocol>: the rates each arm tries (empty: none).
  cached_views: the protocols ("probe", "finetune", "supervised") whose runs
    train on cached views where the crop allows (above); the others' runs
    read every batch through the loader.
  tasks.<name>: m4.models.transfer.TaskSpec fields (kind, inputs, target,
    num_classes, label_smoothing, depth_bins).
  task_protocols.<task>.<protocol>: that task's own values of the protocol's
    fields (e.g. seeds) and, as `learning_rates`, its arms' sweep
    (m4.jobs.transfer_protocols).
  tokenizers.<modality>: tokenizer name or directory of each VQ-token input.
  pixel_normalization: "symmetric" or "imagenet", for pixel inputs.
  data: the pipeline's `config.data` (train_split, eval_split, image_size,
    crops, batch_size, ...); `modalities` is set per task.
  probe, finetune: each protocol's settings (seeds, schedule, AdamW, head;
    every field documented in configs/transfer/common.py:protocol).
  eval: num_samples (0: the whole split), num_examples (samples in pictures).
  log_every, checkpoint_every (0: no checkpoints), mesh, sharding_rules.
  prng_impl: jax.random key implementation of the inits ("rbg", "threefry2x32").
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

from m4 import checkpoints
from m4 import engine
from m4 import evaluators
from m4 import modalities
from m4 import sharding
from m4 import tokenizers
from m4 import workdir as workdir_lib
from m4.data import pipeline
from m4.data import sources
from m4.data import subsets
from m4.evaluators import report
from m4.jobs import transfer_protocols as protocols_lib
from m4.jobs import view_cache
from m4.models import configs
from m4.models import convnet
from m4.models import pretrained
from m4.models import transfer
from m4.workdir import ConfigError, require

INITS = ("pretrained", "scratch")
PROTOCOLS = protocols_lib.PROTOCOLS
# Reference arms beside the encoder's: a supervised conv net on the same labels.
BASELINES = ("convnet",)
SUPERVISED = protocols_lib.SUPERVISED  # The protocol name of a baseline's runs.


# Every field the job reads; a config lacking one is refused, naming it.
FIELDS = ("title", "seeds", "init", "init_key", "init_step", "model", "modalities", "inits",
          "protocols", "label_fractions", "tasks", "task_protocols", "tokenizers",
          "pixel_normalization", "data", "probe", "finetune", "baselines", "baseline_fractions",
          "supervised", "sweep", "cached_views", "eval", "log_every", "checkpoint_every",
          "mesh", "sharding_rules", "prng_impl")


# ------------------------------------------------------------------ runs


def budget_name(fraction: float) -> str:
  """0.1 -> "10pct", 0.005 -> "0.5pct"."""
  pct = float(fraction) * 100
  return f"{pct:g}pct"


def run_name(task: str, init: str, protocol: str, fraction: float, seed: int) -> str:
  return f"{task}__{init}__{protocol}__{budget_name(fraction)}__s{seed}"


def check_config(config) -> None:
  """Early, named errors for the fields every run needs."""
  example = "configs/transfer/scenes.py"
  workdir_lib.require_fields(config, FIELDS, example)
  for protocol in PROTOCOLS + (SUPERVISED,):
    workdir_lib.require_fields(config[protocol], protocols_lib.PROTOCOL_FIELDS, example,
                               f"{protocol}.")
  workdir_lib.require_fields(config.supervised, ("width", "stem"), example, "supervised.")
  require(len(config.seeds) > 0, "seeds", "needs at least one seed.")
  for init in config.inits:
    require(init in INITS, "inits", f"{init!r} is not one of {INITS}.")
  for protocol in config.protocols:
    require(protocol in PROTOCOLS, "protocols", f"{protocol!r} is not one of {PROTOCOLS}.")
  for baseline in config.baselines:
    require(baseline in BASELINES, "baselines", f"{baseline!r} is not one of {BASELINES}.")
  for protocol in config.cached_views:
    require(protocol in PROTOCOLS + (SUPERVISED,), "cached_views",
            f"{protocol!r} is not one of {PROTOCOLS + (SUPERVISED,)}.")
  for field in ("label_fractions", "baseline_fractions"):
    for f in config[field]:
      require(0 < float(f) <= 1, field, f"{f} is not in (0, 1].")
  require(len(config.tasks) > 0, "tasks", "no task to run.")
  if "pretrained" in config.inits:
    require(bool(config.init), "init",
            "the 'pretrained' init needs the directory of a pretraining run or saved model"
            " (--config.init=DIR), or drop it from config.inits.")
    require(os.path.isdir(config.init), "init", f"{config.init!r} is not a directory.")
  require(config.log_every > 0, "log_every", "must be positive.")
  require(config.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0: none).")
  protocols_lib.check(config, tuple(config.protocols)
                      + ((SUPERVISED,) if config.baselines else ()))


def on_mesh(tree, mesh):
  """Leaves not yet placed by name (e.g. optax's step counts) replicated on the mesh,
  so the train step sees the same shardings at every call (one compile)."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(
      lambda x: x if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding)
      else jax.device_put(x, replicated), tree)


class _Context:
  """What all runs of one job share: mesh, base model config, tokenizers, paths."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.eval_dir = os.path.join(self.workdir, "eval")
    try:
      modalities.register_from_config(config.modalities)
    except ValueError as e:
      raise ConfigError(f"config.modalities: {e}") from None
    self.mesh = sharding.make_mesh(config.mesh)
    self.rules = sharding.rules_from_config(config.sharding_rules)
    shards = sharding.num_batch_shards(self.mesh, self.rules)
    require(config.data.batch_size % shards == 0, "data.batch_size",
            f"{config.data.batch_size} does not split over the {shards} batch shards of the mesh.")
    if config.init:
      try:
        self.base = pretrained.read_config(config.init)
        # The tasks may name the model's modalities (e.g. a converted model's).
        modalities.register_from_config(self.base.modalities_dict())
      except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"config.init: {e}") from None
    else:
      require(bool(config.model.get("encoder_modalities")), "model.encoder_modalities",
              "without config.init the model's architecture comes from config.model.")
      self.base = configs.from_config(config.model)
    self.overrides = dict(config.model) if config.init else {}
    self._tokenizers = {}
    # The last m4.jobs.view_cache.ViewCache of each kind ("features", "views"), with its key.
    self.caches = {"features": (None, None), "views": (None, None)}

  def tokenizer(self, name: str):
    if name not in self._tokenizers:
      spec = self.config.tokenizers.get(name) if "tokenizers" in self.config else None
      self._tokenizers[name] = tokenizers.load_for_modality(name, spec)
    return self._tokenizers[name]

  def encoder_inputs(self, task: transfer.TaskSpec) -> transfer.EncoderInputs:
    specs = [transfer.input_spec(self.base, n) for n in task.inputs]
    toks = {m.name: self.tokenizer(m.name) for m in specs if m.kind == modalities.IMAGE}
    return transfer.EncoderInputs(specs, toks,
                                  pixel_normalization=self.config.pixel_normalization)

  def place(self, tree):
    return sharding.to_global(tree, self.mesh, self.rules)


def _task_data(config, task: transfer.TaskSpec):
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.modalities = task.raw_keys()
  return data


@dataclasses.dataclass
class Run:
  """One training run: a task's arm (init x protocol) at a label budget and seed.

  `settings` are the protocol's settings for the task (config.<protocol> with
  the task's task_protocols overrides, and a swept rate where a sweep chose
  one); `split` is where it is evaluated; `group`
  is "" for the reported runs and "sweep" for the learning-rate sweep's.
  """

  task: transfer.TaskSpec
  init: str
  protocol: str
  fraction: float
  seed: int
  settings: ml_collections.ConfigDict
  split: str
  group: str = ""

  @property
  def name(self) -> str:
    name = run_name(self.task.name, self.init, self.protocol, self.fraction, self.seed)
    if self.group:
      name += f"__lr{float(self.settings.learning_rate):g}"
    return name


def build_model(ctx: _Context, run: Run):
  """The task's model on the mesh: encoder pretrained or random, fresh head
  (or, for init "convnet", the supervised conv net)."""
  settings, task = run.settings, run.task
  key = jax.random.key(run.seed, impl=ctx.config.prng_impl)
  if run.init == "convnet":
    make = lambda: convnet.ConvNet(task, image_size=ctx.config.data.image_size,
                                   width=int(settings.width), stem=int(settings.stem),
                                   rngs=nnx.Rngs(params=key))
  else:
    cfg = transfer.backbone_config(ctx.base, task.inputs, ctx.overrides)
    make = lambda: transfer.TransferModel(
        cfg, task, image_size=ctx.config.data.image_size, head_hidden=settings.head_hidden,
        head_norm=settings.head_norm, dense_head=settings.dense_head,
        head_pool=settings.head_pool,
        feature_layers=protocols_lib.optional(settings, "feature_layers"),
        new_inputs=transfer.new_inputs(ctx.base, task.inputs), rngs=nnx.Rngs(params=key))
  # Built eagerly (op by op: no compile of a whole init, which costs more than
  # a small model's training here), then placed by the parameters' logical names.
  with sharding.use(ctx.mesh, ctx.rules):
    model = make()
  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, sharding.state_shardings(state, ctx.mesh, ctx.rules)))
  if run.init == "pretrained":
    step = int(ctx.config.init_step)
    try:
      transfer.restore_encoder(model, ctx.config.init, key=ctx.config.init_key,
                               step=None if step < 0 else step)
    except (FileNotFoundError, KeyError, ValueError) as e:
      raise ConfigError(f"config.init: cannot read the encoder from {ctx.config.init!r}:"
                        f" {str(e).splitlines()[0] if str(e) else e!r}") from None
  return model


def run_settings(ctx: _Context, run: Run) -> dict:
  """Everything a run's result depends on, as JSON (stored with the run)."""
  config, task = ctx.config, run.task
  data = {k: config.data.get(k) for k in (
      "kind", "name", "dir", "train_split", "image_size", "crop_scale",
      "crop_ratio", "flip", "batch_size", "tfds_features", "tfds_semseg_reduce_zero")}
  data["eval_split"] = run.split
  out = {"task": task.settings(), "init": run.init, "protocol": run.protocol,
         "label_fraction": float(run.fraction), "seed": int(run.seed),
         "optimizer": {k: v for k, v in run.settings.to_dict().items()  # Optional fields
                       if k != "seeds" and protocols_lib.OPTIONAL_FIELDS.get(k, object()) != v},
         "model": ctx.overrides, "data": data,
         "inputs": {n: (config.tokenizers.get(n) or modalities.get(n).tokenizer)
                    if modalities.get(n).kind == modalities.IMAGE
                    else config.pixel_normalization for n in task.inputs},
         "eval": config.eval.to_dict(), "prng_impl": config.prng_impl}
  if run.init == "pretrained":
    out["init_dir"] = os.path.abspath(config.init)
    out["init_key"], out["init_step"] = config.init_key, int(config.init_step)
  return json.loads(json.dumps(workdir_lib._to_builtin(out)))  # pylint: disable=protected-access


def _check_same(path: str, settings: dict) -> None:
  """A run's stored settings must be today's: results are never mixed or replaced."""
  stored = workdir_lib.read_json(path)
  stored = stored.get("settings", stored)
  diff = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
  if diff:
    raise ConfigError(
        f"{path} was made with other settings ({', '.join(diff)} differ); use another"
        " --workdir, or move that run away to redo it. Nothing was changed.")


def _train(ctx: _Context, run: Run, data, source, run_dir: str,
           logger: workdir_lib.MetricLogger, note: str):
  """Trains one run (resuming from its checkpoints); returns (model, figures)."""
  config, settings, task = ctx.config, run.settings, run.task
  batch_size = int(data.batch_size)
  num_steps, warmup = protocols_lib.run_length(settings, len(source), batch_size, run.protocol)
  inputs = ctx.encoder_inputs(task)
  model = build_model(ctx, run)
  graphdef, trainable, stats, rest = nnx.split(
      model, transfer.trainable_filter(model, run.protocol), nnx.BatchStat, ...)
  params, stats = nnx.to_pure_dict(trainable), nnx.to_pure_dict(stats)
  tx, lr = protocols_lib.make_optimizer(
      learning_rate=float(settings.learning_rate),
      min_learning_rate=float(settings.min_learning_rate),
      warmup_steps=warmup, num_steps=num_steps,
      weight_decay=float(settings.weight_decay), layer_decay=float(settings.layer_decay),
      depth=model.backbone.cfg.encoder_depth if run.init != "convnet" else 0,
      grad_clip=float(settings.grad_clip),
      b1=float(settings.b1), b2=float(settings.b2),
      decay_rules=model.decay_rules(), new_inputs=getattr(model, "new_inputs", ()))
  features = run.protocol == "probe"
  cache = (_view_cache(ctx, run, model, data, source, features, note)
           if run.protocol in config.cached_views else None)
  it = None if cache is not None else pipeline.make_iterator(
      data, data.train_split, seed=run.seed, training=True, source=source)
  inputs_kind = ("loader" if cache is None else
                 "cached features" if features else "cached views")
  ckpt, start = None, 0
  opt_state = tx.init(params)
  if config.checkpoint_every:
    ckpt = checkpoints.Checkpointer(os.path.join(run_dir, "checkpoints"), max_to_keep=1)
    if ckpt.latest_step() is not None:
      stored, meta = ckpt.restore({"params": params, "stats": stats, "opt_state": opt_state},
                                  data_iter=it)
      stored_kind = meta.get("inputs", "loader")
      if stored_kind != inputs_kind:
        ckpt.close()
        raise ConfigError(f"{ckpt.directory} was written training from the {stored_kind},"
                          f" this run trains from the {inputs_kind}; move that run directory"
                          " away to redo it. Nothing was changed.")
      params, stats, opt_state = stored["params"], stored["stats"], stored["opt_state"]
      start = int(meta["step"])
  state = on_mesh(engine.TrainState(step=np.int32(start), params=params, opt_state=opt_state,
                                    extra=stats), ctx.mesh)
  step_fn = protocols_lib.train_step(graphdef, task, run.protocol, tx,
                                     cache is not None and features)
  print(f"{note}{len(source)} labelled samples, {num_steps} steps"
        f" ({num_steps * batch_size / len(source):.1f} epochs), on {inputs_kind}"
        + (f", resuming at {start}" if start else ""), flush=True)
  logger.total_steps = num_steps

  def batches(step):
    if cache is not None:
      enc, targets = cache.batch(step)
      return rest, ctx.place(enc), ctx.place(targets)
    batch = next(it)
    targets = np.asarray(task.targets(batch))
    if step == start + 1:
      task.check_targets(targets)
    return rest, ctx.place(inputs(batch)), ctx.place(targets)

  def save(step, state, logged):
    del logged
    ckpt.save(step, {"params": state.params, "stats": state.extra,
                     "opt_state": state.opt_state}, data_iter=it, meta={"inputs": inputs_kind})

  def summarize(step, mean):
    return {"loss": mean["loss"], "grad_norm": mean["grad_norm"], "lr": lr(step)}

  with sharding.use(ctx.mesh, ctx.rules):
    try:
      out = engine.train_loop(state, step_fn, batches, start=start, total=num_steps,
                              log_every=int(config.log_every), logger=logger,
                              summarize=summarize, save=save if ckpt is not None else None,
                              checkpoint_every=int(config.checkpoint_every))
    except FloatingPointError as e:
      raise engine.non_finite(f"transfer {run.name}", e,
                              f"Lower its learning rate ({run.settings.learning_rate:g}:"
                              f" {run.protocol}.learning_rate, or the rates of sweep or"
                              f" task_protocols.{run.task.name}.{run.protocol}).") from None
  if out.stopped_at is not None:
    if ckpt is not None:
      ckpt.close()
    raise engine.preempted(f"transfer {run.name}", out.stopped_at,
                           ckpt.directory if ckpt is not None else None)
  state, last, seconds = out.state, out.logged, out.seconds
  if ckpt is not None:
    ckpt.close()
  if it is not None and hasattr(it, "close"):
    it.close()
  figures = {"steps": num_steps, "epochs": num_steps * batch_size / len(source),
             "train_loss": last.get("loss"), "train_seconds": round(seconds, 1),
             "steps_per_sec": (num_steps - start) / max(seconds, 1e-9)}
  figures["train_inputs"] = inputs_kind
  if cache is not None:  # Made once, shared by the runs with the same key (_view_cache).
    figures["cache_seconds"] = round(cache.seconds, 1)
  return nnx.merge(graphdef, nnx.State(state.params), nnx.State(state.extra), rest), figures


def _view_cache(ctx: _Context, run: Run, model, data, source, features: bool, note: str):
  """The m4.jobs.view_cache cache this run trains on, or None where it cannot
  use one (it then trains from the loader): the frozen encoder's `features`
  (a probe: one per arm, label subset and seed), else the encoder's batches
  (one per label subset and seed, for every arm). Kept for the next run with
  the same key (the sweep's other rates; the other arms' runs)."""
  kind = "features" if features else "views"
  key = (run.task.name, run.fraction, run.seed)
  if features:
    key += (run.init, model.feature_layers)
  if ctx.caches[kind][0] == key:
    return ctx.caches[kind][1]
  ctx.caches[kind] = (None, None)  # Frees the last one before building this one.
  why = view_cache.uncached_reason(data)
  if not why:
    inputs = ctx.encoder_inputs(run.task)
    make = view_cache.features_of(model, inputs, ctx.place) if features else inputs
    try:
      with sharding.use(ctx.mesh, ctx.rules):
        cache = view_cache.build(make, run.task.targets, data, source, seed=run.seed,
                                 check=run.task.check_targets)
    except view_cache.Uncacheable as e:
      why = str(e)
  if why:
    print(f"{note}trains from the loader ({why})", flush=True)
    return None
  made = "encoded" if features else "made the encoder's batches of"
  print(f"{note}{made} {len(cache)} samples x {cache.num_views} views once"
        f" ({cache.seconds:.1f} s)", flush=True)
  ctx.caches[kind] = (key, cache)
  return cache


def train_and_evaluate(ctx: _Context, run: Run, label: str = "",
                       trained: tuple | None = None) -> tuple[dict, tuple | None]:
  """One run (see the module doc): (its result dict, (model, training figures,
  run directory)); the second is None when the run was done before.

  `trained`: that triple from a run that trained the same model (same task,
  init, protocol, labels, seed and settings; only the evaluated split differs):
  it is evaluated instead of trained again.
  """
  config, task, name = ctx.config, run.task, run.name
  eval_dir = os.path.join(ctx.eval_dir, run.group) if run.group else ctx.eval_dir
  result_path = os.path.join(eval_dir, f"{name}.json")
  run_dir = os.path.join(ctx.workdir, "runs", task.name, *([run.group] if run.group else []),
                         name.split("__", 1)[1])
  settings_path = os.path.join(run_dir, "run.json")
  run_config = run_settings(ctx, run)
  if os.path.exists(result_path):
    _check_same(result_path, run_config)
    print(f"{label}{name}: done before, skipped", flush=True)
    return workdir_lib.read_json(result_path), None
  if os.path.exists(settings_path):
    _check_same(settings_path, run_config)
  elif jax.process_index() == 0:
    workdir_lib.write_json(settings_path, run_config)
  t0 = time.time()
  data = _task_data(config, task)
  source = subsets.LabelSubset(sources.make_source(data, data.train_split), run.fraction,
                               run.seed)
  logger = workdir_lib.MetricLogger(run_dir, name=f"{task.name} {run.init} {run.protocol}")
  if trained is None:
    model, figures = _train(ctx, run, data, source, run_dir, logger, note=f"{label}{name}: ")
    trained_dir = run_dir
  else:
    model, figures, trained_dir = trained
    print(f"{label}{name}: the model trained by {trained_dir}", flush=True)
  evaluator = evaluators.get(task.kind)(
      task=task, data=data, split=run.split, seed=run.seed, inputs=ctx.encoder_inputs(task),
      mesh=ctx.mesh, rules=ctx.rules, num_examples=config.eval.num_examples,
      num_samples=config.eval.num_samples)
  metrics = evaluator.run(model)
  logger.write(figures["steps"], {f"{run.split}/{k}": v for k, v in metrics.items()},
               progress=False)
  logger.close()
  result = {
      "run": name, "task": task.name, "kind": task.kind, "init": run.init,
      "protocol": run.protocol, "label_fraction": float(run.fraction),
      "num_labels": len(source), "seed": int(run.seed),
      "learning_rate": float(run.settings.learning_rate),
      **figures, "seconds": round(time.time() - t0, 1), "metrics": metrics,
      "headline": list(evaluator.headline),
      "higher_is_better": dict(evaluator.higher_is_better),
      "eval_split": run.split, "init_dir": config.init or "",
      "run_dir": trained_dir, "settings": run_config,
  }
  if jax.process_index() == 0:
    if evaluator.examples and not run.group:
      report.save_examples(os.path.join(ctx.eval_dir, "examples", f"{name}.npz"),
                           evaluator.examples)
    workdir_lib.write_json(result_path, result)
  shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in evaluator.headline)
  print(f"{label}{name}: {shown} on {run.split} ({result['seconds']:.0f} s)", flush=True)
  return result, (model, figures, trained_dir)


def _arms(config, task: transfer.TaskSpec) -> list[tuple[float, str, str]]:
  """(label fraction, init, protocol) of every arm of a task: the encoder's,
  then the baselines' (the conv net reads pixels only, so it skips tasks with
  token inputs)."""
  arms = [(float(f), init, protocol) for f in config.label_fractions for init in config.inits
          for protocol in config.protocols]
  pixels = all(modalities.get(n).kind == modalities.PIXELS for n in task.inputs)
  if "convnet" in config.baselines and pixels:
    fractions = config.baseline_fractions or config.label_fractions
    arms += [(float(f), "convnet", SUPERVISED) for f in fractions]
  return arms


def _better(result: dict, best: dict | None) -> bool:
  if best is None:
    return True
  metric = result["headline"][0]
  higher = result["higher_is_better"].get(metric, True)
  a, b = result["metrics"][metric], best["metrics"][metric]
  return a > b if higher else a < b


def sweep(ctx: _Context, task: transfer.TaskSpec, fraction: float, init: str, protocol: str,
          label: str = "") -> tuple[ml_collections.ConfigDict, list[dict], tuple | None]:
  """The protocol's settings with the learning rate that does best on `sweep.split`.

  Every arm gets the same sweep (m4.jobs.transfer_protocols.sweep_rates) on
  its first seed's label subset, scored by the task's first headline metric
  on the sweep's split (the validation split: the test split is never used
  to choose). Returns (settings, the sweep's results, the chosen run's
  trained model as `train_and_evaluate` returns it, or None): the first
  seed's final run is that model, evaluated on the final split.
  """
  settings = protocols_lib.settings(ctx.config, task.name, protocol)
  rates = protocols_lib.sweep_rates(ctx.config, task.name, protocol)
  if not rates:
    return settings, [], None
  seed = protocols_lib.seeds(ctx.config, task.name, protocol)[0]
  results, best = [], None
  for lr in rates:
    tried = settings.copy_and_resolve_references()
    tried.learning_rate = float(lr)
    r, trained = train_and_evaluate(ctx, Run(task, init, protocol, fraction, seed, tried,
                                             ctx.config.sweep.split, group="sweep"), label=label)
    results.append(r)
    if _better(r, best):
      best, chosen, chosen_model = r, tried, trained
  return chosen, results, chosen_model


def run(config, workdir: str) -> dict:
  check_config(config)
  ctx = _Context(config, workdir)  # Reads the model's config: refuses before writing.
  protocols_lib.check(config, tuple(config.protocols), depth=ctx.base.encoder_depth)
  workdir_lib.write_config(config, workdir)
  tasks = [transfer.TaskSpec.from_config(n, config.tasks[n]) for n in config.tasks]
  arms = [(task, *arm) for task in tasks for arm in _arms(config, task)]
  t0 = time.time()
  results, swept = [], []
  for i, (task, fraction, init, protocol) in enumerate(arms):
    label = f"[transfer {i + 1}/{len(arms)}] "
    settings, tried, chosen = sweep(ctx, task, fraction, init, protocol, label)
    swept += tried
    seeds = protocols_lib.seeds(config, task.name, protocol)
    for seed in seeds:
      reuse = chosen if seed == seeds[0] else None
      results.append(train_and_evaluate(
          ctx, Run(task, init, protocol, fraction, int(seed), settings, config.data.eval_split),
          label=label, trained=reuse)[0])
  if jax.process_index() != 0:
    return {"runs": len(results)}
  paths = report.write(ctx.eval_dir, results, title=config.title,
                       notes=report.describe(config), sweep=swept)
  summary = {"results": paths["table"], "plot": paths["plot"],
             "runs": len(results) + len(swept), "seconds": round(time.time() - t0, 1)}
  if paths.get("predictions"):
    summary["predictions"] = paths["predictions"]
  summary["headline"] = report.headline(results)
  summary["verdicts"] = report.verdicts(results)
  return summary
