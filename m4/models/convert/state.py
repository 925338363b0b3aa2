"""Converts reference state dicts to m4 parameters and back, and whole checkpoints.

Tied weights are loaded once (the copy must be equal); buffers are recomputed
and compared, not loaded. A missing tensor, a wrong shape or an unused tensor
is a ConversionError naming it.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from m4.models import configs
from m4.models import pretrained
from m4.models.convert.planning import ConversionError, Plan, plan, register
from m4.models.convert.source import read_source
from m4.models.convert.tensor_map import rules
from m4.models.fourm import FourM


def _abstract_params(cfg: configs.FourMConfig) -> dict:
  model = nnx.eval_shape(lambda: FourM(cfg, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _get_path(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set_path(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


# Stored position tables (sin-cos buffers) may differ from m4's recomputation
# by float32 rounding: a 1-ulp difference in a frequency (10000 ** -k, whose
# float32 pow varies between CPUs and libraries) is multiplied by the position,
# up to ~3e-5 at position 512. A different layout or temperature differs by O(1).
BUFFER_ATOL = 1e-4


def to_m4(tensors: dict[str, np.ndarray], p: Plan, *, atol: float = BUFFER_ATOL) -> dict:
  """The m4 parameters (a pure dict of numpy arrays) of reference `tensors`."""
  register(p)
  expected = _abstract_params(p.cfg)
  the_rules, buffers, ties = rules(p)
  used = set()
  stacks: dict[tuple, dict[int, np.ndarray]] = {}
  params: dict = {}
  for rule in the_rules:
    shape = tuple(_get_path(expected, rule.path).shape)
    if rule.layer is not None:
      shape = shape[1:]
    want = rule.to_ref(np.zeros(shape, np.float32))
    arrays = []
    for ref, w in zip(rule.refs, want):
      if ref not in tensors:
        raise ConversionError(f"missing tensor {ref!r} (for m4 parameter {'/'.join(rule.path)}).")
      a = np.asarray(tensors[ref], np.float32)
      if a.shape != w.shape:
        raise ConversionError(f"tensor {ref!r} has shape {a.shape}; expected {w.shape} "
                              f"(m4 parameter {'/'.join(rule.path)}).")
      arrays.append(a)
      used.add(ref)
    value = rule.to_m4(*arrays)
    if rule.layer is None:
      _set_path(params, rule.path, value)
    else:
      stacks.setdefault(rule.path, {})[rule.layer] = value
  for path, layers in stacks.items():
    _set_path(params, path, np.stack([layers[i] for i in range(len(layers))]))
  for name, value in buffers:
    if name not in tensors:
      continue  # Buffers are recomputed; a checkpoint may omit them.
    used.add(name)
    got = np.asarray(tensors[name], np.float32)
    rows = min(got.shape[1], value.shape[1]) if got.ndim == 3 else None
    if got.ndim != value.ndim or (rows is None and got.shape != value.shape):
      raise ConversionError(f"buffer {name!r} has shape {got.shape}; expected {value.shape}.")
    diff = np.max(np.abs(got[:, :rows] - value[:, :rows])) if rows else np.max(np.abs(got - value))
    if diff > atol:
      raise ConversionError(f"buffer {name!r} differs from m4's recomputed value by {diff:.3g}.")
  for copy, original in ties:
    if copy not in tensors:
      continue
    used.add(copy)
    if not np.array_equal(tensors[copy], tensors[original]):
      raise ConversionError(f"tensor {copy!r} should equal {original!r} (tied), but differs.")
  skipped = tuple(f"{part}_embeddings.{r}." for r in p.skipped for part in ("encoder", "decoder"))
  unused = sorted(k for k in tensors if k not in used and not k.startswith(skipped))
  if unused:
    raise ConversionError(f"tensors m4 does not use: {unused[:20]}"
                          f"{' ...' if len(unused) > 20 else ''}.")
  return params


def to_reference(params: dict, p: Plan) -> dict[str, np.ndarray]:
  """The reference state dict (tied copies and buffers included) of m4 params."""
  the_rules, buffers, ties = rules(p)
  out = {}
  for rule in the_rules:
    value = np.asarray(_get_path(params, rule.path), np.float32)
    if rule.layer is not None:
      value = value[rule.layer]
    for ref, a in zip(rule.refs, rule.to_ref(value)):
      out[ref] = np.ascontiguousarray(a, np.float32)
  for name, value in buffers:
    out[name] = np.array(value)
  for copy, original in ties:
    out[copy] = out[original].copy()
  return out


def convert_checkpoint(src: str, out: str | None = None, *, suffix: str = "",
                       skip_unknown: bool = False):
  """Converts the reference checkpoint `src` (see read_source) to an m4 model.

  Writes it to `out` when given (m4.models.pretrained.save: config.json, with
  the name map under `source`, and checkpoints/0; load it with
  pretrained.load(out) or `--config.init=out`). Returns (model, plan).
  """
  tensors, ref_cfg = read_source(src)
  p = plan(tensors, ref_cfg, suffix=suffix, skip_unknown=skip_unknown)
  params = to_m4(tensors, p)
  model = nnx.eval_shape(lambda: FourM(p.cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, params))
  nnx.update(model, state)
  if out:
    pretrained.save(out, model, extra={"source": {"path": os.path.abspath(src),
                                                  "names": p.names, "skipped": p.skipped}})
  return model, p
