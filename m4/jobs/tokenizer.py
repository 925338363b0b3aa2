"""Trains the VQ tokenizer of one image-like modality (`config.job = "tokenizer"`).

    python -m m4.main --config=configs/tokenizers/rgb_scenes.py --workdir=DIR

Writes to DIR, besides what every job writes (config.json, metrics.jsonl,
TensorBoard events):

  checkpoints/          orbax: model (weights + codebook), optimizer, RNG,
                        data iterator; rerunning resumes from the latest
  tokenizer.json        the spec `m4.tokenizers.load(DIR)` needs
  eval/metrics.json     held-out figures (see `evaluate`)
  eval/reconstructions.png  originals beside reconstructions and tokens

The returned summary holds the held-out figures and the grid's path.
Config fields (all read here; see configs/tokenizers/*.py):

  modality             registry name ("rgb", "depth", "semseg", "normals", ...); its
                       vocab_size and grid size the codebook and the grid
  seed                 initialisation, data order, restarts
  data                 m4.data.pipeline config (data.batch_size = global batch)
  model                VQVAE settings: channels, num_res_blocks, code_dim,
                       patch (0: derived), ema_decay, dead_threshold,
                       restart_noise
  io                   loss_weights (per modality), num_classes (semseg)
  commitment           weight of the quantizer's commitment loss
  optimizer            learning_rate, warmup_steps, end_learning_rate,
                       weight_decay, b1, b2, grad_clip
  num_steps, log_every, checkpoint_every, keep_checkpoints
  eval                 split, num_samples (0: the whole split), batch_size,
                       grid_rows
  mesh, sharding_rules m4.sharding (data parallel: the batch is split)
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from m4 import checkpoints
from m4 import engine
from m4 import modalities
from m4 import optim
from m4 import pictures
from m4 import sharding
from m4 import workdir as workdir_lib
from m4.data import pipeline
from m4.data import sources
from m4.data.scene_spec import FIRST_OBJECT_CLASS
from m4.tokenizers import modality_io
from m4.tokenizers import quantizer as quantizer_lib
from m4.tokenizers import vq_tokenizer
from m4.workdir import ConfigError, require


# Every field the job reads (configs/tokenizers/common.py writes them all).
FIELDS = ("modality", "seed", "data", "model", "io", "commitment", "optimizer", "num_steps",
          "log_every", "checkpoint_every", "keep_checkpoints", "eval", "mesh", "sharding_rules")


def spec_from_config(config, step: int | None = None, metrics=None) -> vq_tokenizer.TokenizerSpec:
  require(config.modality in modalities.names(), "modality",
          f"{config.modality!r} is not registered; known: {modalities.names()}")
  modality = modalities.get(config.modality)
  require(modality.is_image, "modality", f"{config.modality!r} is not an image modality.")
  require(modality.data_key in modality_io.KEYS, "modality",
          f"{config.modality!r} is made from {modality.data_key!r}; VQ tokenizers handle"
          f" {', '.join(modality_io.KEYS)}.")
  io = {"loss_weights": dict(config.io.loss_weights)}
  if modality.data_key == "semseg":
    require(int(config.io.get("num_classes") or 0) >= 2, "io.num_classes",
            "semseg tokenizers need the number of classes.")
    io["num_classes"] = int(config.io.num_classes)
  image_size = tuple(int(s) for s in config.data.image_size)
  try:
    vq_tokenizer.downsample_factor(modality, image_size)
  except ValueError as e:
    raise workdir_lib.ConfigError(f"config.data.image_size: {e}") from None
  return vq_tokenizer.TokenizerSpec(
      modality=modality.to_dict(), image_size=image_size,
      model=config.model.to_dict(), io=io, step=step, metrics=metrics)


# Weight decay on kernels (the only parameters with ndim > 1), not biases and norm scales.
DECAY_RULES = (("(.*/)?kernel", True),)


def make_optimizer(opt, total_steps: int):
  """(AdamW with warmup + cosine decay and gradient clipping, its schedule), by
  `m4.optim.make`, with weight decay by DECAY_RULES."""
  return optim.make(dict(
      lr=opt.learning_rate, warmup_steps=opt.warmup_steps,
      decay_steps=max(int(total_steps), opt.warmup_steps + 1), end_lr=opt.end_learning_rate,
      b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, clip_norm=opt.grad_clip,
      decay_rules=DECAY_RULES))


class Trainer:
  """The jitted steps of one tokenizer: built once, used by train and eval."""

  def __init__(self, config, mesh):
    self.config = config
    self.mesh = mesh
    self.rules = sharding.rules_from_config(config.sharding_rules)
    self.spec = spec_from_config(config)
    try:
      model, self.io = vq_tokenizer.build(self.spec, nnx.Rngs(config.seed))
    except (TypeError, ValueError) as e:
      raise workdir_lib.ConfigError(f"config.model / config.io: {e}") from None
    self.vocab_size = model.quantizer.num_codes
    self.graphdef, params, codebook = nnx.split(model, nnx.Param, quantizer_lib.CodebookState)
    self.tx, self.schedule = make_optimizer(config.optimizer, config.num_steps)
    self.replicated = NamedSharding(mesh, P())
    self.initial = jax.device_put(engine.init_state(params, self.tx, extra={
        "codebook": codebook, "rng": jax.random.PRNGKey(config.seed + 1)}), self.replicated)
    self.train_step = engine.make_train_step(self._loss, self.tx, param_norm=False)
    self.eval_step = jax.jit(self._eval_step)

  @staticmethod
  def to_checkpoint(state: engine.TrainState) -> dict:
    """The stored layout: `model` holds weights and codebook together."""
    return {vq_tokenizer.MODEL_KEY: nnx.merge_state(state.params, state.extra["codebook"]),
            "opt": state.opt_state, "rng": state.extra["rng"]}

  def from_checkpoint(self, stored, step: int) -> engine.TrainState:
    params, codebook = nnx.split_state(stored[vq_tokenizer.MODEL_KEY], nnx.Param,
                                       quantizer_lib.CodebookState)
    return engine.TrainState(step=jax.device_put(np.int32(step), self.replicated),
                             params=params, opt_state=stored["opt"],
                             extra={"codebook": codebook, "rng": stored["rng"]})

  def model(self, state: engine.TrainState) -> nnx.Module:
    return nnx.merge(self.graphdef, state.params, state.extra["codebook"])

  def _loss(self, params, extra, x):
    """The engine's loss function: reconstruction + commitment; the codebook's
    EMA update (which reads no parameter) is the step's `extra`."""
    rng, ema_key = jax.random.split(extra["rng"])
    codebook = jax.tree.map(lambda x: x, extra["codebook"])  # Variables of this trace.
    model = nnx.merge(self.graphdef, params, codebook)
    out = model(self.io.prepare(x))
    rec, metrics = self.io.loss(out.output, x)
    q = out.quantizer
    loss = rec + self.config.commitment * q.commitment
    restarted = model.quantizer.ema_update(q.normalized, q.indices, ema_key)
    stats = quantizer_lib.code_statistics(quantizer_lib.assignment_counts(q.indices, self.vocab_size))
    alive = jnp.mean(model.quantizer.ema_count.get_value() >= model.quantizer.dead_threshold)
    metrics = dict(metrics, reconstruction=rec, commitment=q.commitment,
                   batch_codebook_usage=stats["codebook_usage"],
                   batch_perplexity=stats["perplexity"], codes_restarted=restarted,
                   codes_alive=alive)
    return loss, (metrics, {"codebook": nnx.state(model, quantizer_lib.CodebookState),
                            "rng": rng})

  def _eval_step(self, state, x, valid):
    model = self.model(state)
    q = model.encode(self.io.prepare(x))
    output = model.decode_indices(q.indices)
    sums = self.io.metric_sums(output, x, valid)
    counts = jnp.zeros((self.vocab_size,), jnp.float32).at[q.indices.reshape(valid.shape[0], -1)].add(
        jnp.broadcast_to(valid[:, None].astype(jnp.float32), (valid.shape[0], q.indices[0].size)))
    return sums, counts, q.indices, self.io.postprocess(output)


def _check_config(config):
  workdir_lib.require_fields(config, FIELDS, "configs/tokenizers/common.py")
  require(int(config.num_steps) > 0, "num_steps", f"must be positive, got {config.num_steps}.")
  require(int(config.log_every) > 0, "log_every", f"must be positive, got {config.log_every}.")
  require(int(config.checkpoint_every) > 0, "checkpoint_every",
          f"must be positive, got {config.checkpoint_every}.")
  require(float(config.commitment) >= 0, "commitment", "must be >= 0.")
  require(int(config.eval.batch_size) > 0, "eval.batch_size", "must be positive.")


def _data_config(config, batch_size=None):
  data = config.data.copy_and_resolve_references()
  key = modalities.get(config.modality).data_key
  with data.unlocked():
    data.modalities = (key,)
    if batch_size is not None:
      data.batch_size = int(batch_size)
  return data


def evaluate(trainer: Trainer, state, config, workdir: str) -> tuple[dict, str]:
  """Held-out figures over `config.eval` and the reconstruction grid.

  Figures: rgb PSNR (mean over images, and of the mean MSE), depth abs-rel and
  delta1 over valid pixels, semseg mIoU, normals mean angular error, edges
  pixel precision / recall / F1 (normals of scenes: also the angle on object
  pixels) of the reconstruction against the input;
  codebook usage (fraction of codes used over the held-out set) and
  perplexity of the held-out tokens.
  """
  key = modalities.get(config.modality).data_key
  data = _data_config(config, config.eval.batch_size)
  # Normals of the scenes: also the error on object pixels, which the ground
  # (one flat normal over most of the image) would otherwise hide.
  objects = key == "normals" and data.kind == "scenes"
  if objects:
    with data.unlocked():
      data.modalities = (key, "semseg")
  object_angles = []
  total = len(sources.make_source(data, config.eval.split))
  n = total if not config.eval.num_samples else min(int(config.eval.num_samples), total)
  batches = pipeline.num_eval_batches(data, n)
  it = pipeline.make_iterator(data, config.eval.split, seed=config.seed, training=False)
  sums, counts, seen, grid_rows = None, None, 0, []
  for _ in tqdm(range(batches), desc=f"eval {config.modality}", leave=False):
    batch = next(it)
    valid = np.asarray(batch["valid"]) & (seen + np.arange(len(batch["valid"])) < n)
    seen += len(valid)
    x, v = sharding.to_global((np.asarray(batch[key]), valid.astype(np.float32)),
                              trainer.mesh, trainer.rules)
    s, c, tokens, recon = trainer.eval_step(state, x, v)
    sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
    counts = c if counts is None else counts + c
    if objects:
      semseg = np.asarray(batch["semseg"])
      on_object = (semseg >= FIRST_OBJECT_CLASS) & (semseg != 255) & valid[:, None, None]
      cos = np.sum(np.asarray(recon) * np.asarray(batch[key]), -1)[on_object]
      object_angles.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    if len(grid_rows) < config.eval.grid_rows:
      tokens, recon = np.asarray(tokens), np.asarray(recon)
      for i in np.flatnonzero(valid)[:config.eval.grid_rows - len(grid_rows)]:
        grid_rows.append({"input": np.asarray(batch[key][i]), "reconstruction": recon[i],
                          "tokens": tokens[i]})
  metrics = trainer.io.metrics_from_sums(jax.device_get(sums))
  if objects:
    metrics["angle_deg_objects"] = float(np.mean(np.concatenate(object_angles)))
  metrics.update({k: float(v) for k, v in quantizer_lib.code_statistics(counts).items()})
  metrics["num_samples"] = n
  metrics["split"] = config.eval.split
  kind = trainer.io.key  # The picture kind: "edges" for rgb_edges too.
  grid_path = os.path.join(workdir, "eval", "reconstructions.png")
  if jax.process_index() == 0:
    pictures.save_grid(grid_path, grid_rows, kinds={"input": kind, "reconstruction": kind,
                                                   "tokens": "tokens"},
                       titles={"tokens": f"tokens {trainer.spec.modality['grid']}"})
  return metrics, grid_path


def run(config, workdir: str) -> dict:
  _check_config(config)
  mesh = sharding.make_mesh(config.mesh)
  trainer = Trainer(config, mesh)
  num_steps = int(config.num_steps)
  data = _data_config(config)
  require(int(data.batch_size) % sharding.num_batch_shards(mesh, trainer.rules) == 0,
          "data.batch_size", f"{data.batch_size} does not divide over the mesh's batch shards.")
  key = modalities.get(config.modality).data_key
  it = pipeline.make_iterator(data, data.train_split, seed=config.seed, training=True)
  with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                max_to_keep=config.keep_checkpoints) as ckpt:
    state, step, train_seconds = trainer.initial, 0, 0.0
    try:
      resumed = ckpt.restore_latest(trainer.to_checkpoint(state), data_iter=it)
    except ConfigError as e:
      raise ConfigError(f"{workdir} holds a tokenizer run the config does not match: {e} Use a"
                        " new workdir, or the config the run was made with.") from None
    if resumed is not None:
      stored, meta, _ = resumed
      step, train_seconds = int(meta["step"]), float(meta.get("train_seconds", 0.0))
      state = trainer.from_checkpoint(stored, step)
      logging.info("tokenizer: resumed %s from step %d", workdir, step)
      print(f"tokenizer {config.modality}: resuming from step {step}", flush=True)
    workdir_lib.write_config(config, workdir)  # Checked against the workdir: now it writes.

    logger = workdir_lib.MetricLogger(workdir, num_steps, name=f"vq_{config.modality}")
    t0 = time.time()

    def batches(step):
      del step
      return sharding.to_global(np.asarray(next(it)[key]), mesh, trainer.rules)

    def summarize(step, means):
      means = dict(means, learning_rate=trainer.schedule(step - 1))
      first = ["loss", *trainer.io.headline, "batch_codebook_usage", "batch_perplexity"]
      rest = sorted(k for k in set(means) - set(first) if not k.startswith("_"))
      return {k: means[k] for k in first + rest}

    def save(step, state, logged):
      del logged
      ckpt.save(step, trainer.to_checkpoint(state), data_iter=it,
                meta={"step": step, "train_seconds": train_seconds + time.time() - t0})

    try:
      out = engine.train_loop(
          state, trainer.train_step, batches, start=step, total=num_steps,
          log_every=int(config.log_every), logger=logger, summarize=summarize, save=save,
          checkpoint_every=int(config.checkpoint_every),
          meter=engine.Meter(sums=("codes_restarted",)))  # Restarts add up; the rest average.
    except FloatingPointError as e:
      raise engine.non_finite(f"tokenizer {config.modality}", e, "Lower optimizer.lr.") from None
    if out.stopped_at is not None:
      raise engine.preempted(f"tokenizer {config.modality}", out.stopped_at, ckpt.directory)
    state, step = out.state, max(step, num_steps)
  train_seconds += time.time() - t0

  metrics, grid_path = evaluate(trainer, state, config, workdir)
  logger.write(step, {f"eval/{k}": v for k, v in metrics.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}, progress=False)
  logger.close()
  workdir_lib.write_json(os.path.join(workdir, "eval", "metrics.json"), metrics)
  spec = spec_from_config(config, step=step, metrics=metrics)
  if jax.process_index() == 0:
    workdir_lib.write_json(os.path.join(workdir, vq_tokenizer.SPEC_FILE), spec.to_json())
  summary = {k: v for k, v in metrics.items() if not isinstance(v, list)}
  summary.update({"modality": config.modality, "steps": step, "grid": grid_path,
                  "train_seconds": round(train_seconds, 1), "tokenizer_dir": workdir})
  return summary
