"""What pretraining measures on held-out data, and its pictures.

    ev = PretrainEval(config, data, graphdef, mesh, rules)
    ev.held_out(params)        # masked loss / accuracy per modality (config.masking)
    ev.cross_modal(params)     # e.g. rgb -> depth, rgb -> semseg token accuracy
    ev.baseline()              # the best constant predictors of those tokens
    ev.prediction_grid(params, "grid.png")
    plot_curves(workdir, "curves.png")

Cross-modal accuracy: on `config.eval.split`, every token of the
`eval.cross_modal.inputs` modalities goes in and every token of one target
modality is predicted at once (argmax per position); accuracy is over all
target tokens of all samples. Token accuracy cannot tell a map that draws
the objects from one that draws only sky and ground (most tokens are
background), so each target is also decoded by its VQ tokenizer and scored
against the decoded true tokens: semseg mIoU and IoU per class, depth delta1
and abs-rel (`.../decoded/...`). The constant baselines, fitted on the training
split (central views), predict (a) the training split's most frequent token
at each grid position, (b) its most frequent token overall; `baseline()`
reports both and the stronger is the bar to beat.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from m4 import modalities as modalities_lib
from m4 import pictures
from m4 import sharding
from m4 import workdir as workdir_lib
from m4.data import pretrain_data


def model_batch(batch: Mapping[str, Any], names) -> dict:
  """The modality entries of a loader batch (drops `id`, `valid`, ...);
  rows with `valid` False lose their inputs and targets."""
  valid = batch.get("valid")
  out = {}
  for n in names:
    entry = dict(batch[n])
    if valid is not None:
      keep = np.asarray(valid, bool)[:, None]
      for k in ("input_mask", "target_mask"):
        entry[k] = np.asarray(entry[k]) & keep
      entry["decoder_attention_mask"] = np.asarray(entry["decoder_attention_mask"]) * keep
    out[n] = entry
  return out


class PretrainEval:
  """Held-out evaluation of a pretraining run (see the module docstring)."""

  def __init__(self, config, data: pretrain_data.PretrainData, graphdef, mesh, rules):
    self.config, self.data, self.mesh, self.rules = config, data, mesh, rules
    self.ev = config.eval
    self.names = data.names
    self.targets = tuple(self.ev.cross_modal.targets)
    self.inputs = tuple(self.ev.cross_modal.inputs)
    for n in self.targets + self.inputs:
      workdir_lib.require(n in self.names, "eval.cross_modal",
                          f"{n!r} is not one of config.masking.modalities {self.names}.")
    # Checked here, before the run writes, not at its first evaluation.
    pretrain_data.check_cross_modal(self.inputs, self.targets)
    self._baseline = None

    def metrics(params, batch, n_enc=None, n_dec=None):
      return nnx.merge(graphdef, params)(batch, n_enc, n_dec)[1]

    def predict(params, batch, n_enc, n_dec, target):
      model = nnx.merge(graphdef, params)
      enc = model.encode(batch, n_enc)
      dec = model.decode(batch, enc, n_dec)
      ids = jnp.argmax(model.logits(dec.out, target), -1).astype(jnp.int32)
      b = ids.shape[0]
      grid = jnp.zeros((b, modalities_lib.get(target).num_tokens), jnp.int32)
      rows = jnp.arange(b)[:, None]
      where = jnp.where(dec.slots.valid, dec.slots.position, grid.shape[1])  # Padding: dropped.
      return grid.at[rows, where].set(ids, mode="drop")

    # Replicated outputs: every process can read them (multi-host).
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._metrics = jax.jit(metrics, static_argnums=(2, 3), out_shardings=replicated)
    self._predict = jax.jit(predict, static_argnums=(2, 3, 4), out_shardings=replicated)

  def _global(self, batch):
    return sharding.to_global(batch, self.mesh, self.rules)

  def _run(self, fn, *args):
    with sharding.use(self.mesh, self.rules):
      return jax.device_get(fn(*args))

  def _batches(self, dataset, limit: int):
    for i, batch in enumerate(dataset):
      if limit and i >= limit:
        break
      yield batch

  # ---------------------------------------------------------------- masked loss

  def held_out(self, params) -> dict[str, float]:
    """Loss and accuracy per modality over the masked eval split."""
    ds = self.data.eval_dataset(self.ev.split, self.ev.batch_size, seed=self.config.seed)
    sums = {}
    for batch in self._batches(ds, int(self.ev.num_batches)):
      m = self._run(self._metrics, params, self._global(model_batch(batch, self.names)))
      for n in self.names:
        t = float(m.get(f"tokens/{n}", 0.0))
        s = sums.setdefault(n, np.zeros(3))
        s += [float(m.get(f"loss/{n}", 0.0)) * t, float(m.get(f"accuracy/{n}", 0.0)) * t, t]
    per = {}
    for n, (loss, acc, t) in sums.items():
      if t > 0:
        per[f"loss/{n}"], per[f"accuracy/{n}"] = loss / t, acc / t
    losses = [v for k, v in per.items() if k.startswith("loss/")]
    # Mean over modalities of each one's mean cross-entropy (the training loss's definition).
    return {"loss": float(np.mean(losses)) if losses else float("nan"), **per}

  # ---------------------------------------------------------------- cross-modal

  def _token_batches(self, split: str, limit: int):
    ds = self.data.token_dataset(split, self.ev.batch_size)
    return self._batches(ds, limit)

  def _shape(self, target):
    n_enc = sum(modalities_lib.get(n).num_tokens for n in self.inputs)
    return n_enc, modalities_lib.get(target).num_tokens

  def cross_modal(self, params) -> dict[str, float]:
    """Token accuracy and loss of each target predicted from the inputs alone,
    and the decoded prediction's quality (module docstring)."""
    if not self.targets:
      return {}
    try:
      vq = self.data.vq_tokenizers()
    except workdir_lib.ConfigError:
      vq = {}
    scorers = {t: _decoded_scorer(vq[t]) for t in self.targets if t in vq}
    sums = {t: np.zeros(3) for t in self.targets}
    decoded = {t: {} for t in scorers}
    for batch in self._token_batches(self.ev.split, int(self.ev.num_batches)):
      valid = np.asarray(batch["valid"], bool)
      for t in self.targets:
        mb = pretrain_data.cross_modal_batch(batch, self.inputs, t, valid)
        m = self._run(self._metrics, params, self._global(mb), *self._shape(t))
        k = float(m[f"tokens/{t}"])
        sums[t] += [float(m[f"accuracy/{t}"]) * k, float(m[f"loss/{t}"]) * k, k]
        if t in scorers:
          pred = self._run(self._predict, params, self._global(mb), *self._shape(t), t)
          grid = (-1,) + tuple(modalities_lib.get(t).grid)
          true, ok = _all_processes(np.asarray(batch[t])), _all_processes(valid)
          got = scorers[t](np.asarray(pred).reshape(grid), true.reshape(grid),
                           ok.astype(np.float32))
          for key, v in jax.device_get(got).items():
            decoded[t][key] = decoded[t].get(key, 0.0) + np.asarray(v, np.float64)
    src = "+".join(self.inputs)
    out = {}
    for t, (acc, loss, k) in sums.items():
      out[f"{src}_to_{t}/accuracy"] = float(acc / max(k, 1.0))
      out[f"{src}_to_{t}/loss"] = float(loss / max(k, 1.0))
      if decoded.get(t):
        for name, v in vq[t].io.metrics_from_sums(decoded[t]).items():
          if isinstance(v, list):
            out.update({f"{src}_to_{t}/decoded/{name}/{i}": x for i, x in enumerate(v)
                        if x is not None})
          else:
            out[f"{src}_to_{t}/decoded/{name}"] = v
    return out

  def baseline(self) -> dict[str, float]:
    """Accuracy of the constant predictors on the eval split (module docstring)."""
    if self._baseline is not None or not self.targets:
      return self._baseline or {}
    counts = {}
    for batch in self._token_batches(self.config.data.train_split,
                                     int(self.ev.baseline_batches)):
      ok = np.asarray(batch["valid"], bool)
      for t in self.targets:
        mod = modalities_lib.get(t)
        grid = np.asarray(batch[t]).reshape(len(ok), -1)[ok]
        c = counts.setdefault(t, np.zeros((mod.num_tokens, mod.vocab_size), np.int64))
        np.add.at(c, (np.broadcast_to(np.arange(mod.num_tokens), grid.shape), grid), 1)
    counts = {t: _sum_over_processes(c) for t, c in counts.items()}
    per_position = {t: c.argmax(1) for t, c in counts.items()}
    overall = {t: c.sum(0).argmax() for t, c in counts.items()}
    hits = {t: np.zeros(3) for t in self.targets}
    for batch in self._token_batches(self.ev.split, int(self.ev.num_batches)):
      ok = np.asarray(batch["valid"], bool)
      for t in self.targets:
        grid = np.asarray(batch[t]).reshape(len(ok), -1)[ok]
        hits[t] += [(grid == per_position[t]).sum(), (grid == overall[t]).sum(), grid.size]
    out = {}
    for t, h in hits.items():
      pos, ovr, n = _sum_over_processes(h)
      out[f"{t}/per_position"] = float(pos / max(n, 1))
      out[f"{t}/overall"] = float(ovr / max(n, 1))
      out[f"{t}/best"] = float(max(pos, ovr) / max(n, 1))
    self._baseline = out
    return out

  # ---------------------------------------------------------------- pictures

  def prediction_grid(self, params, path: str, num: int) -> str | None:
    """PNG: inputs | per target: true tokens decoded | predicted tokens decoded.

    Every process computes (the model is sharded); process 0 draws the
    first `num` samples of its first batch.
    """
    if not self.targets:  # Nothing predicted, nothing to draw.
      return None
    try:
      vq = self.data.vq_tokenizers()
    except workdir_lib.ConfigError:
      return None
    batch = next(iter(self._token_batches(self.ev.split, 1)))
    ok = np.asarray(batch["valid"], bool)
    num = min(num, int(ok.sum()))
    rows = [dict() for _ in range(num)]
    kinds, titles = {}, {}
    for n in self.inputs:
      mod = modalities_lib.get(n)
      if mod.kind == modalities_lib.PIXELS:
        img, what = np.asarray(batch[n][:num], np.float32) / 255.0, "pixels"
      else:
        img, what = np.asarray(vq[n].decode(np.asarray(batch[n][:num], np.int32))), "tokens"
      for r, x in zip(rows, img):
        r[f"in:{n}"] = x
      kinds[f"in:{n}"], titles[f"in:{n}"] = mod.data_key, f"{n} (input {what})"
    for t in self.targets:
      key = modalities_lib.get(t).data_key
      mb = pretrain_data.cross_modal_batch(batch, self.inputs, t, ok)
      pred = self._run(self._predict, params, self._global(mb), *self._shape(t), t)
      h, w = modalities_lib.get(t).grid
      true_img = np.asarray(vq[t].decode(np.asarray(batch[t][:num], np.int32)))
      pred_img = np.asarray(vq[t].decode(np.asarray(pred[:num]).reshape(num, h, w)))
      acc = (np.asarray(pred[:num]) == np.asarray(batch[t][:num]).reshape(num, -1)).mean(1)
      for i, (r, a, b) in enumerate(zip(rows, true_img, pred_img)):
        r[f"true:{t}"], r[f"pred:{t}"] = a, b
        rows[i].setdefault("_acc", []).append(f"{t} {acc[i]:.0%}")
      kinds[f"true:{t}"] = kinds[f"pred:{t}"] = key
      titles[f"true:{t}"], titles[f"pred:{t}"] = f"{t} (true tokens)", f"{t} (predicted)"
    captions = [f"{self.ev.split} {int(batch['id'][i])}: token accuracy "
                + ", ".join(rows[i].pop("_acc")) for i in range(num)]
    if jax.process_index() != 0:
      return path
    return pictures.save_grid(path, rows, captions, kinds=kinds, titles=titles)


def _decoded_scorer(tok):
  """Jitted (predicted tokens, true tokens, valid) -> the tokenizer's metric
  sums of the decoded prediction against the decoded truth."""

  def score(pred, true, valid):
    _, out = tok.decode_traced(pred)
    truth, _ = tok.decode_traced(true)
    return tok.io.metric_sums(out, truth, valid)

  return jax.jit(score)


def _all_processes(x: np.ndarray) -> np.ndarray:
  """A host-side batch of every process, in the order of the global batch."""
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


def _sum_over_processes(x: np.ndarray) -> np.ndarray:
  """Elementwise sum of a host-side array over all processes."""
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.process_allgather(np.asarray(x))).sum(0)


def plot_curves(workdir: str, path: str) -> str | None:
  """PNG: training and held-out loss, and held-out accuracies, against steps."""
  rows = workdir_lib.read_metrics(workdir)
  if not rows or jax.process_index() != 0:
    return None
  # Heavy (matplotlib); only the curves' plot needs it.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  def series(key):
    pts = {}
    for r in rows:  # A resumed run logs some steps twice: the last one counts.
      if key in r:
        pts[r["step"]] = r[key]
    steps = sorted(pts)
    return steps, [pts[s] for s in steps]

  keys = sorted({k for r in rows for k in r})
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
  for k in ["train/loss", "val/loss"] + [k for k in keys if k.startswith("val/loss/")]:
    s, v = series(k)
    if s:
      ax1.plot(s, v, label=k, lw=2 if k.count("/") == 1 else 1)
  ax1.set(xlabel="step", ylabel="cross-entropy", title="loss")
  ax1.legend(fontsize=8)
  for k in keys:
    if "accuracy" in k and (k.startswith("val/") or k.startswith("cross_modal/")):
      s, v = series(k)
      ax2.plot(s, v, label=k, marker="o" if k.startswith("cross_modal/") else None, ms=3)
    if k.startswith("baseline/") and k.endswith("/best"):
      s, v = series(k)
      if s:
        ax2.axhline(v[-1], ls="--", lw=1, color="gray")
        ax2.annotate(k, (s[-1], v[-1]), fontsize=7, color="gray")
  ax2.set(xlabel="step", ylabel="token accuracy", title="held-out accuracy")
  ax2.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
