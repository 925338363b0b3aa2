"""The encoder-only oracle: what this budget allows for one cross-modal mapping.

    python experiments/pretrain_objects/oracle.py --config=configs/pretrain/scenes_tiny.py:quick \
        --input=rgb_pixels --target=semseg --steps=450 --out=workdirs/oracle/semseg

A plain 4M encoder (the pretraining config's width and encoder depth) reads
every token of `--input` and a linear layer predicts every token of
`--target` at its grid position (per-position cross-entropy, AdamW, warmup +
cosine): supervised, single-task, no decoder, no masking. The same token
shards, views, batch size and step count as the pretraining run, so its
held-out figures (token accuracy, and the decoded map's mIoU / IoU per class
or delta1 against the decoded true tokens, as `m4.jobs.pretrain_eval`
scores 4M) say what 4M's cross-modal prediction could reach at this budget.
Prints one JSON line per evaluation and writes OUT/oracle.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from ml_collections import config_flags

from m4 import modalities
from m4.data import pretrain_data
from m4.models import configs
from m4.models.fourm import FourM
from m4.jobs import pretrain_eval


class Oracle(nnx.Module):
  """4M's encoder on one input modality + a per-position linear readout."""

  def __init__(self, cfg: configs.FourMConfig, vocab_size: int, rngs: nnx.Rngs):
    self.backbone = FourM(cfg, rngs=rngs)
    self.head = nnx.Linear(cfg.dim, vocab_size, rngs=rngs)

  def __call__(self, batch):
    enc = self.backbone.encode(batch)
    return self.head(enc.out)  # (B, N, V): slot n is grid position n (all inputs, in order).


def _config(path: str, inputs: str, target: str, steps: int):
  config = config_flags.config_flags._ConfigFileParser("config").parse(path)  # pylint: disable=protected-access
  config.masking.modalities = (inputs, target)
  n_in, n_out = (modalities.get(n).num_tokens for n in (inputs, target))
  comp = dict(weight=1.0, input_alphas={inputs: 1.0, target: 0.0},
              target_alphas={inputs: 0.0, target: 1.0}, keep={})
  config.masking.update(dict(num_input_tokens=n_in, min_input_tokens=n_in,
                             num_target_tokens=n_out, min_target_tokens=n_out,
                             condition_dropout=dict(all=0.0, per_modality=0.0)))
  config.masking.mixture = ml_collections.ConfigDict({"oracle": comp})
  config.eval.cross_modal = dict(inputs=(inputs,), targets=(target,))
  config.total_steps = steps
  return config


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--input", default="rgb_pixels")
  p.add_argument("--target", default="semseg")
  p.add_argument("--steps", type=int, default=450)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--eval_every", type=int, default=150)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--set", action="append", default=[], help="config overrides a.b=json")
  p.add_argument("--out", required=True)
  args = p.parse_args()
  config = _config(args.config, args.input, args.target, args.steps)
  for item in args.set:
    key, value = item.split("=", 1)
    node = config
    *parents, leaf = key.split(".")
    for k in parents:
      node = node[k]
    node[leaf] = json.loads(value)
  modalities.register_from_config(config.get("modalities"))
  data = pretrain_data.PretrainData(config)
  mod = modalities.get(args.target)
  cfg = configs.from_config(config.model).replace(
      encoder_modalities=(args.input,), decoder_modalities=(args.target,), decoder_depth=1,
      num_encoder_tokens=modalities.get(args.input).num_tokens, num_decoder_tokens=1)
  model = Oracle(cfg, mod.vocab_size, nnx.Rngs(args.seed))
  opt = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, args.lr, int(opt.warmup_steps), args.steps, args.lr * float(opt.final_lr_ratio))
  tx = optax.chain(optax.clip_by_global_norm(float(opt.clip_norm)),
                   optax.adamw(schedule, b1=float(opt.b1), b2=float(opt.b2),
                               weight_decay=float(opt.weight_decay)))
  graphdef, params = nnx.split(model, nnx.Param)
  opt_state = tx.init(params)

  def loss_fn(params, batch, targets):
    logits = nnx.merge(graphdef, params)(batch).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.mean(ce), jnp.mean(jnp.argmax(logits, -1) == targets)

  @jax.jit
  def step(params, opt_state, batch, targets):
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, targets)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  @jax.jit
  def predict(params, batch):
    return jnp.argmax(nnx.merge(graphdef, params)(batch), -1).astype(jnp.int32)

  vq = data.vq_tokenizers()
  scorer = pretrain_eval._decoded_scorer(vq[args.target])  # pylint: disable=protected-access
  grid = (-1,) + tuple(mod.grid)

  def evaluate(params):
    hits = total = 0
    sums = {}
    for batch in data.token_dataset(config.eval.split, int(config.eval.batch_size)):
      valid = np.asarray(batch["valid"], bool)
      mb = pretrain_data.cross_modal_batch(batch, (args.input,), args.target, valid)
      pred = np.asarray(predict(params, {args.input: mb[args.input]}))
      true = np.asarray(batch[args.target]).reshape(len(valid), -1)
      hits += int(((pred == true) & valid[:, None]).sum())
      total += int(valid.sum()) * true.shape[1]
      got = jax.device_get(scorer(pred.reshape(grid), true.reshape(grid),
                                  valid.astype(np.float32)))
      for k, v in got.items():
        sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
    return {"accuracy": hits / max(total, 1), **vq[args.target].io.metrics_from_sums(sums)}

  it = data.train_iterator(seed=args.seed)
  os.makedirs(args.out, exist_ok=True)
  history, t0 = [], time.time()
  for i in range(1, args.steps + 1):
    batch = pretrain_eval.model_batch(next(it), data.names)
    targets = jnp.asarray(batch[args.target]["tensor"], jnp.int32)
    params, opt_state, loss, acc = step(params, opt_state, {args.input: batch[args.input]},
                                        targets)
    if i % args.eval_every == 0 or i == args.steps:
      row = {"step": i, "train_loss": float(loss), "train_accuracy": float(acc),
             "seconds": round(time.time() - t0, 1), **evaluate(params)}
      history.append(row)
      print(json.dumps(row), flush=True)
  with open(os.path.join(args.out, "oracle.json"), "w") as f:
    json.dump({"args": vars(args), "history": history}, f, indent=1)


if __name__ == "__main__":
  main()
