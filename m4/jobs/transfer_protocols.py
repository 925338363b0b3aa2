"""A transfer config's protocol settings (`config.<protocol>`, with a task's own
overrides) and what they make: a run's length, optimizer and train step.

`config.task_protocols.<task>.<protocol>` holds the fields of `config.<protocol>`
that differ for that one task (e.g. more seeds for one task's fine-tuning)
and, as `learning_rates`, the rates that task's arms sweep under that
protocol (else `config.sweep.learning_rates.<protocol>`; an empty list: no
sweep). Every arm of the task (pretrained, scratch) gets the same overrides.
As in `config.<protocol>`, empty `seeds` mean `config.seeds`.
"""

from __future__ import annotations

import functools
import math

import ml_collections
from flax import nnx

from m4 import engine
from m4 import optim
from m4.models import transfer
from m4.models import transfer_heads
from m4.workdir import ConfigError, require

PROTOCOLS = ("probe", "finetune")
SUPERVISED = "supervised"  # The protocol name of a baseline's runs.
PROTOCOL_FIELDS = ("seeds", "num_steps", "num_epochs", "learning_rate", "min_learning_rate",
                   "warmup_steps", "warmup_epochs", "weight_decay", "layer_decay", "grad_clip",
                   "head_hidden", "head_norm", "dense_head", "head_pool", "b1", "b2")
# Optional fields (a config without them gets the default; stored only when set).
OPTIONAL_FIELDS = {"feature_layers": 1}
SWEEP = "learning_rates"  # An override's sweep rates.


def optional(settings, field: str):
  """An optional field's value in a protocol's settings, else its default."""
  return settings.get(field, OPTIONAL_FIELDS[field])


def _override(config, task: str, protocol: str) -> dict:
  per_task = config.task_protocols.get(task) or {}
  override = per_task.get(protocol) or {}
  return dict(override.to_dict() if hasattr(override, "to_dict") else override)


def settings(config, task: str, protocol: str) -> ml_collections.ConfigDict:
  """config.<protocol> with the task's overrides (less its sweep rates) over it."""
  out = config[protocol].copy_and_resolve_references()
  for k, v in _override(config, task, protocol).items():
    if k != SWEEP:
      try:
        out[k] = v
      except TypeError as e:  # ml_collections refuses a value of another type.
        raise ConfigError(f"config.task_protocols.{task}.{protocol}.{k}: {e}") from None
  return out


def sweep_rates(config, task: str, protocol: str) -> tuple[float, ...]:
  """The learning rates each arm of `task` tries under `protocol` (empty: no sweep)."""
  override = _override(config, task, protocol)
  rates = override[SWEEP] if SWEEP in override else (
      config.sweep.learning_rates.get(protocol, ()) or ())
  return tuple(float(r) for r in rates)


def seeds(config, task: str, protocol: str) -> tuple[int, ...]:
  """The seeds of a task's runs under a protocol: its own, else the config's."""
  return tuple(int(s) for s in (settings(config, task, protocol).seeds or config.seeds))


def check(config, protocols, depth: int = 0) -> None:
  """Named errors for `task_protocols`, and for each protocol's settings as each
  task runs it; `depth`: the encoder's (0: not known yet)."""
  known = PROTOCOLS + (SUPERVISED,)
  for task, per_task in (config.task_protocols or {}).items():
    require(task in config.tasks, f"task_protocols.{task}",
            f"names no task of config.tasks ({', '.join(config.tasks)}).")
    for protocol, override in (per_task or {}).items():
      where = f"task_protocols.{task}.{protocol}"
      require(protocol in known, where, f"{protocol!r} is not one of {known}.")
      known_fields = PROTOCOL_FIELDS + tuple(OPTIONAL_FIELDS) + (SWEEP,)
      unknown = sorted(set(override) - set(known_fields))
      require(not unknown, where, f"unknown fields {unknown}; known: {sorted(known_fields)}.")
      if SWEEP in override:
        rates = override[SWEEP]
        require(isinstance(rates, (list, tuple)), f"{where}.{SWEEP}",
                f"must be a list of learning rates (empty: no sweep), got {rates!r}.")
        require(all(float(r) > 0 for r in rates), f"{where}.{SWEEP}", "must be positive.")
  for protocol in protocols:
    for task in config.tasks:
      override, s = _override(config, task, protocol), settings(config, task, protocol)
      # Each field named where its value comes from: the task's override or the protocol.
      at = lambda f: (f"task_protocols.{task}.{protocol}.{f}" if f in override  # pylint: disable=cell-var-from-loop
                      else f"{protocol}.{f}")
      require(s.num_steps > 0 or s.num_epochs > 0, at("num_steps"), "set num_steps or num_epochs.")
      require(s.learning_rate > 0, at("learning_rate"), "must be positive.")
      require(0 < s.layer_decay <= 1, at("layer_decay"), "must be in (0, 1].")
      require(protocol == "finetune" or s.layer_decay == 1.0, at("layer_decay"),
              "a probe trains no encoder layer; keep 1.0.")
      require(s.head_hidden >= 0, at("head_hidden"), "must be >= 0.")
      layers = optional(s, "feature_layers")
      whole = isinstance(layers, int) and not isinstance(layers, bool)
      require(whole and 1 <= layers <= (depth or layers), at("feature_layers"),
              f"{layers!r} is not a number of encoder layers in [1, {depth or '...'}].")
      for field, allowed in (("head_norm", transfer_heads.NORMS), ("head_pool", transfer_heads.POOLS),
                             ("dense_head", transfer.DENSE_HEADS)):
        require(s[field] in allowed, at(field), f"{s[field]!r} is not one of {allowed}.")


# ------------------------------------------------------------------ optimizer


@functools.lru_cache(maxsize=None)
def make_optimizer(*, learning_rate: float, min_learning_rate: float, warmup_steps: int,
                   num_steps: int, weight_decay: float, layer_decay: float, depth: int,
                   grad_clip: float, b1: float, b2: float, decay_rules: optim.Rules = (),
                   new_inputs: tuple[str, ...] = ()):
  """(optimizer, schedule) of a protocol's settings (`m4.optim.make`): AdamW,
  warmup + cosine, optional clipping, weight decay by `decay_rules`
  (transfer.decay_rules) and, with layer_decay < 1, transfer.layer_decay_rules
  (the embeddings of `new_inputs` at the full rate).

  Cached, so runs with the same settings share one compiled train step.
  """
  return optim.make(dict(
      lr=learning_rate, warmup_steps=max(int(warmup_steps), 1),
      decay_steps=max(int(num_steps), 2), end_lr=min_learning_rate, b1=b1, b2=b2,
      weight_decay=weight_decay, clip_norm=grad_clip, decay_rules=decay_rules,
      lr_mults=(transfer.layer_decay_rules(depth, layer_decay, new_inputs)
                if layer_decay < 1.0 else ())))


def run_length(settings, num_labels: int, batch_size: int, where: str) -> tuple[int, int]:
  """(steps, warmup steps) of a protocol for a labelled subset of this size."""
  per_epoch = num_labels / batch_size
  steps = int(settings.num_steps) or math.ceil(settings.num_epochs * per_epoch)
  warmup = int(settings.warmup_steps) or int(round(settings.warmup_epochs * per_epoch))
  require(steps >= 1, f"{where}.num_steps", "gives no step.")
  require(warmup < steps, f"{where}.warmup_steps",
          f"warmup ({warmup} steps) must be shorter than the run ({steps} steps).")
  return steps, warmup


# ------------------------------------------------------------------ steps


@functools.lru_cache(maxsize=None)
def train_step(graphdef, task, protocol: str, tx, on_features: bool = False):
  """The run's `m4.engine` step: `step(state, (rest, enc, targets))`, with the
  trainable parameters as `state.params` and the heads' running batch
  statistics as `state.extra` (both pure dicts), `rest` the model's other
  state, `enc` the encoder's input batch or, `on_features`, the (features,
  valid) of a probe's m4.jobs.view_cache. Cached, so runs with the same
  settings share one compiled step."""

  def loss_fn(params, stats, batch):
    rest, enc, targets = batch
    model = nnx.merge(graphdef, nnx.State(params), nnx.State(stats), rest)
    outputs = (model.readout(*enc, train=True) if on_features
               else model(enc, frozen=protocol == "probe", train=True))
    loss = transfer.loss(task, outputs, targets)
    return loss, ({}, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

  return engine.make_train_step(loss_fn, tx, param_norm=False)
