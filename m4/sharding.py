"""Device mesh, logical axis rules, and the shardings of state and batches.

Model code names *logical* axes only; the config maps them onto mesh axes.
Parameters and activations have names of their own, so each is placed on
purpose: parameters `embed`, `heads`, `kv`, `mlp`, `vocab`, `layers`;
activations `act_batch`, `act_length`, `act_embed`, `act_heads`, `act_kv`,
`act_mlp`, `act_vocab` (batches are split by `act_batch`).

    config.mesh = {"data": -1, "fsdp": 1, "tensor": 1}   # -1: all the rest
    config.sharding_rules = (("act_batch", ("data", "fsdp")), ("embed", "fsdp"), ...)

Parameters carry their logical names as `nnx.with_partitioning(init, names)`
metadata; activations are constrained with `constrain(x, names)`, which does
nothing outside `with use(mesh, rules):`. The same code runs on 1 CPU, 8
devices or many hosts.

On a CPU, `use_cpu_devices()` (called by `m4.main` and the benchmarks before
JAX starts) gives the process one XLA device per core, so a data-parallel
mesh keeps every core busy: XLA:CPU leaves a second core mostly idle inside
one device's small convolutions and matmuls.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from m4.workdir import ConfigError

LogicalRules = tuple[tuple[str, Any], ...]
MAX_AUTO_CPU_DEVICES = 8


def auto_cpu_devices(cores: int) -> int:
  """One device per core, rounded down to a power of two (batches split evenly), at most 8."""
  n = 1
  while n * 2 <= min(cores, MAX_AUTO_CPU_DEVICES):
    n *= 2
  return n


def use_cpu_devices(requested: int = 0) -> int | None:
  """Sets `jax_num_cpu_devices` before a backend starts: `requested`, or (0) one
  per core of this process (`auto_cpu_devices`), unless the environment
  already sets a count (XLA_FLAGS, JAX_NUM_CPU_DEVICES). Returns the count set."""
  if requested < 0:
    raise ValueError(f"CPU devices: need 0 (one per core) or a positive count, got {requested}")
  if not requested:
    if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
        or "JAX_NUM_CPU_DEVICES" in os.environ):
      return None
    requested = auto_cpu_devices(len(os.sched_getaffinity(0)))
  jax.config.update("jax_num_cpu_devices", requested)
  return requested

MESH_AXES = ("data", "fsdp", "tensor")

# Data parallelism over `data`, ZeRO-3 style parameter sharding over `fsdp`
# (the batch is split over it too, so activations keep their width whole),
# Megatron-style tensor parallelism over `tensor`. A rule's value is a mesh
# axis, a tuple of them, or None.
DEFAULT_RULES: LogicalRules = (
    # Parameters.
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    # Activations.
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)
BATCH = "act_batch"  # The logical name that splits batches over devices.
LOGICAL_AXES = tuple(name for name, _ in DEFAULT_RULES)  # Every name the models use.


def make_mesh(mesh_config: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor); one size may be -1 (the rest)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = dict(mesh_config or {"data": -1})
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f"config.mesh: unknown axes {sorted(unknown)}; known: {MESH_AXES}")
  shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
  if shape.count(-1) > 1:
    raise ConfigError(f"config.mesh: at most one axis may be -1, got {sizes}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ConfigError(f"config.mesh: {sizes} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ConfigError(f"config.mesh: {sizes} needs {math.prod(shape)} devices, "
                      f"but {len(devices)} are available")
  # mesh_utils orders devices for the interconnect (and by host on multi-host).
  try:
    arr = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, MESH_AXES)


def mesh_axes(axes) -> tuple[str, ...]:
  """A rule's or a PartitionSpec entry's mesh axes as a tuple: None -> (), "data" -> ("data",)."""
  return (axes,) if isinstance(axes, str) else tuple(axes or ())


def rules_from_config(rules) -> LogicalRules:
  """`config.sharding_rules` (a sequence of (logical name, mesh axes) pairs, or
  None: DEFAULT_RULES) as a tuple. Names left out are replicated; a name the
  models do not use or an axis the mesh does not have is refused by rule
  (`logical_to_spec` alone would replicate its arrays without a word)."""
  if rules is None:
    return DEFAULT_RULES
  out = []
  for i, item in enumerate(rules):
    where = f"config.sharding_rules[{i}]"
    if isinstance(item, str) or not hasattr(item, "__len__") or len(item) != 2:
      raise ConfigError(f"{where}: {item!r} is not a (logical name, mesh axes) pair.")
    name, axes = item
    if name not in LOGICAL_AXES:
      raise ConfigError(f"{where}: unknown logical axis {name!r}; the models name"
                        f" {', '.join(LOGICAL_AXES)}.")
    axes = tuple(axes) if isinstance(axes, list) else axes
    unknown = [a for a in mesh_axes(axes) if a not in MESH_AXES]
    if unknown:
      raise ConfigError(f"{where}: {name!r} maps to {unknown}, not mesh axes; the mesh has"
                        f" {', '.join(MESH_AXES)} (or None: replicated).")
    out.append((str(name), axes))
  return tuple(out)


def logical_to_spec(names: Sequence[str | None] | None, rules: LogicalRules) -> P:
  """PartitionSpec for logical axis names (unknown names are replicated)."""
  if names is None:
    return P()
  table = dict(rules)
  used = set()
  out = []
  for n in names:
    axes = table.get(n) if n is not None else None
    # A mesh axis may shard only one dimension of an array.
    flat = tuple(a for a in mesh_axes(axes) if a not in used)
    used.update(flat)
    out.append(None if not flat else flat[0] if len(flat) == 1 else flat)
  return P(*out)


class _Context(threading.local):
  mesh: Mesh | None = None
  rules: LogicalRules = ()


_CTX = _Context()


@contextlib.contextmanager
def use(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
  """Within this block, `constrain` and parameter creation use mesh and rules."""
  old = (_CTX.mesh, _CTX.rules)
  _CTX.mesh, _CTX.rules = mesh, rules
  try:
    with nnx.logical_axis_rules(rules):
      yield mesh
  finally:
    _CTX.mesh, _CTX.rules = old


def current() -> tuple[Mesh | None, LogicalRules]:
  """The (mesh, rules) of the enclosing `use(...)`; (None, ()) outside."""
  return _CTX.mesh, _CTX.rules


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside `use(...)`."""
  if _CTX.mesh is None or _CTX.mesh.size == 1:
    return x
  spec = logical_to_spec(names, _CTX.rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(_CTX.mesh, spec))


def param_names(var) -> tuple | None:
  """The logical names a parameter was created with (None: replicate)."""
  meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
  return meta.get("out_sharding") or meta.get("sharding") or meta.get("sharding_names")


def state_shardings(state, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
  """NamedShardings for an nnx.State (or tree of Variables) by logical names.

  A dimension that does not divide its mesh axes is replicated instead.
  """

  def one(var):
    if not isinstance(var, nnx.Variable):
      return NamedSharding(mesh, P())
    shape = np.shape(var.get_value() if hasattr(var, "get_value") else var.value)
    spec = logical_to_spec(param_names(var), rules) if param_names(var) else P()
    spec = _fit(spec, shape, mesh)
    return var.replace(NamedSharding(mesh, spec))

  return jax.tree.map(one, state, is_leaf=lambda v: isinstance(v, nnx.Variable))


def _fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  out = []
  for i, dim in enumerate(shape):
    axes = spec[i] if i < len(spec) else None
    flat = mesh_axes(axes)
    size = math.prod(mesh.shape[a] for a in flat)
    out.append(axes if flat and dim % size == 0 else None)
  return P(*out)


def init_sharded(make_model, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
  """Builds `make_model()` with every parameter created in place on the mesh.

  The model is traced abstractly first, so no device ever holds a full copy.
  """
  abstract = nnx.eval_shape(make_model)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(abstract_state, mesh, rules)

  @jax.jit
  def init():
    state = nnx.split(make_model())[1]
    return jax.lax.with_sharding_constraint(state, shardings)

  return nnx.merge(graphdef, init())


def batch_spec(rules: LogicalRules = DEFAULT_RULES, ndim: int = 1) -> P:
  """Batch arrays: leading axis over the `act_batch` rule, the rest replicated."""
  return P(logical_to_spec((BATCH,), rules)[0], *([None] * (ndim - 1)))


def batch_sharding(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
  return NamedSharding(mesh, batch_spec(rules))


def to_global(local_batch, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
  """Host-local numpy batch -> global jax.Arrays split over the batch axes.

  Each process passes its own slice (global batch / process count rows).
  """

  def one(x):
    x = np.asarray(x)
    sharding = NamedSharding(mesh, batch_spec(rules, x.ndim))
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(one, local_batch)


def num_batch_shards(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> int:
  """How many ways the batch is split (the global batch must divide by it)."""
  return math.prod(mesh.shape[a] for a in mesh_axes(logical_to_spec((BATCH,), rules)[0]))
