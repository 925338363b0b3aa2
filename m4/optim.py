"""The optimizer from config, in the style of big_vision's `bv_optax.make`.

    tx, schedule = optim.make(dict(lr=1e-3, warmup_steps=100, decay_steps=1000,
                                   weight_decay=0.05, clip_norm=1.0,
                                   decay_rules=((r".*/kernel", True),)))

AdamW on a warmup + cosine (or linear, or constant) schedule, optional
global-norm clipping, and per-parameter settings given as rules on parameter
paths. A path is the "/"-joined keys from the root of the parameter tree
("encoder/qkv", "head/readout/out/kernel"); a rule is `(regex, value)`, the
regex matched with `re.fullmatch`, and the first rule that matches wins:

  decay_rules: (regex, bool): which parameters get weight decay (default no).
  lr_mults:    (regex, factor): multiplies the parameter's update (its learning
               rate, weight decay included; default 1). A tuple of factors
               gives one per entry of the leading axis (stacked blocks).
  frozen:      (regex, bool): parameters whose update is zero (default no).

The chain is clip -> adamw(schedule, mask=decay) -> lr_mults -> frozen; the
last two are left out when no rule asks for them.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import optax

Rules = Sequence[tuple[str, Any]]

DEFAULTS = dict(lr=None, warmup_steps=0, decay_steps=None, end_lr=0.0, decay="cosine",
                b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=0.0,
                decay_rules=(), lr_mults=(), frozen=())
DECAYS = ("cosine", "linear", "constant")


def path_name(path) -> str:
  """"a/b/0" of a jax key path (an nnx.Variable's own `value` attribute left out)."""
  keys = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      keys.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      keys.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      if k.name != "value":
        keys.append(k.name)
    else:
      keys.append(str(getattr(k, "key", k)))
  return "/".join(keys)


def match(rules: Rules, name: str, default: Any = None) -> Any:
  """The value of the first rule whose regex fully matches `name`, else `default`."""
  for pattern, value in rules:
    if re.fullmatch(pattern, name):
      return value
  return default


def rule_tree(rules: Rules, tree, default: Any = None):
  """`tree` with each leaf replaced by its rule's value (`match` of its path)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: match(rules, path_name(path), default), tree)


def nnx_filter(rules: Rules, default: bool = False) -> Callable[[Any, Any], bool]:
  """An nnx filter `(path, value) -> bool` from (regex, bool) rules on the path."""
  return lambda path, value: bool(match(rules, "/".join(str(k) for k in path), default))


def schedule(lr: float, warmup_steps: int, decay_steps: int, end_lr: float = 0.0,
             decay: str = "cosine") -> optax.Schedule:
  """Linear warmup from 0 to `lr` over `warmup_steps`, then `decay` to `end_lr`
  at `decay_steps` (counted from step 0, warmup included)."""
  if decay not in DECAYS:
    raise ValueError(f"decay {decay!r} is not one of {DECAYS}.")
  if decay == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup_steps, decay_steps=decay_steps,
        end_value=end_lr)
  after = (optax.constant_schedule(lr) if decay == "constant" else
           optax.linear_schedule(lr, end_lr, decay_steps - warmup_steps))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup_steps), after], [warmup_steps])


def _factor(value, x, name: str):
  if isinstance(value, (tuple, list)):
    n = len(value)
    if np.ndim(x) == 0 or np.shape(x)[0] != n:
      raise ValueError(f"lr_mults: {name} has leading axis"
                       f" {np.shape(x)[0] if np.ndim(x) else None}, not the {n} factors of"
                       " its rule.")
    return np.asarray(value, np.float32).reshape((n,) + (1,) * (np.ndim(x) - 1))
  return np.full((), value, np.float32)


def lr_mults(rules: Rules) -> optax.GradientTransformation:
  """Scales each update by its rule's factor (`_factor`; default 1)."""

  def scale(updates, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda p, u: u * _factor(match(rules, path_name(p), 1.0), u, path_name(p)), updates)

  return optax.stateless(scale)


def make(config: Mapping[str, Any]) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optax transformation, learning-rate schedule) of `config` (fields `DEFAULTS`;
  `lr` and `decay_steps` are required)."""
  c = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  unknown = sorted(set(c) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"unknown optimizer fields {unknown}; known {sorted(DEFAULTS)}.")
  c = {**DEFAULTS, **c}
  for k in ("lr", "decay_steps"):
    if c[k] is None:
      raise ValueError(f"the optimizer needs {k!r}.")
  sched = schedule(c["lr"], c["warmup_steps"], c["decay_steps"], c["end_lr"], c["decay"])
  decay_rules, mults, frozen = (tuple(c[k]) for k in ("decay_rules", "lr_mults", "frozen"))
  parts = [optax.clip_by_global_norm(c["clip_norm"])] if c["clip_norm"] > 0 else []
  parts.append(optax.adamw(sched, b1=c["b1"], b2=c["b2"], eps=c["eps"],
                           weight_decay=c["weight_decay"],
                           mask=lambda params: rule_tree(decay_rules, params, False)))
  if any(np.any(np.asarray(v) != 1.0) for _, v in mults):
    parts.append(lr_mults(mults))
  if any(v for _, v in frozen):
    parts.append(optax.masked(optax.set_to_zero(),
                              lambda params: rule_tree(frozen, params, False)))
  return optax.chain(*parts), sched
