"""A 4M encoder with a task head, for transfer (probing and fine-tuning).

    task = transfer.TaskSpec.from_config("semseg", config.tasks.semseg)
    cfg = transfer.backbone_config(pretrained.read_config(init_dir), task.inputs)
    model = transfer.TransferModel(cfg, task, image_size=(64, 64), head_hidden=0,
                                   rngs=nnx.Rngs(0))
    transfer.restore_encoder(model, init_dir)          # or keep the random init
    inputs = transfer.EncoderInputs([cfg.modality(n) for n in cfg.encoder_modalities],
                                    {"rgb": vq_rgb})
    out = model(inputs(raw_batch))                     # logits / log-depth

Every token of every input modality is an encoder input (no masking), so the
encoder's slots hold the modalities in `cfg.encoder_modalities` order, each
row-major: dense heads read the token grid back from fixed offsets, and with
several inputs (rgb + depth) concatenate their features per grid cell.

The backbone is m4's FourM with only the task's input modalities and a
one-block stub decoder (FourM requires one; transfer never calls it, and only
the parameters `encode` reads are trained, restored or saved).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4 import checkpoints
from m4 import modalities
from m4 import optim
from m4 import value_scales
from m4.models import configs
from m4.models import transfer_heads as heads
from m4.models.fourm import FourM
from m4.workdir import ConfigError, require

CLASSIFICATION, SEGMENTATION, DEPTH = "classification", "segmentation", "depth"
TASK_KINDS = (CLASSIFICATION, SEGMENTATION, DEPTH)
PIXEL_NORMALIZATIONS = value_scales.PIXEL_NORMALIZATIONS
# Dense tasks' heads: a per-token readout laid out as pixels, or a light
# convolutional upsampling decoder (m4.models.transfer_heads).
DENSE_HEADS = ("patch", "bilinear", "upsample")
# Top-level FourM parameters that `encode` reads (besides per-modality embeddings).
_ENCODER_KEYS = ("encoder", "encoder_norm_scale", "encoder_norm_bias")
_EMBED_KEYS = ("encoder_embed", "modality_embed")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A downstream task (`config.tasks.<name>`).

  Attributes:
    name: the task's key in config.tasks.
    kind: one of TASK_KINDS.
    inputs: encoder modalities (registry names) the model reads.
    target: raw-sample key of the label, "/" for nested keys
      ("labels/count", "semseg", "depth").
    num_classes: classes of classification and segmentation tasks.
    label_smoothing: classification only.
    depth_bins: depth only. 0: the head regresses the normalised log-depth;
      K > 0: it scores K bins spread evenly over the depth range, and the
      prediction is their softmax-weighted centre (DINOv2's depth probe,
      after AdaBins), which can change sharply between two patch centres.
  """

  name: str
  kind: str
  inputs: tuple[str, ...]
  target: str
  num_classes: int = 0
  label_smoothing: float = 0.0
  depth_bins: int = 0

  @classmethod
  def from_config(cls, name: str, c: Mapping[str, Any]) -> "TaskSpec":
    where = f"tasks.{name}"
    d = dict(c.to_dict() if hasattr(c, "to_dict") else c)
    fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
    unknown = sorted(set(d) - fields)
    require(not unknown, where, f"unknown fields {unknown}; known: {sorted(fields)}.")
    for f in ("kind", "inputs", "target"):
      require(f in d, f"{where}.{f}", "is required.")
    d["inputs"] = tuple(d["inputs"]) if not isinstance(d["inputs"], str) else (d["inputs"],)
    task = cls(name=name, **d)
    require(task.kind in TASK_KINDS, f"{where}.kind", f"{task.kind!r} is not one of {TASK_KINDS}.")
    require(len(task.inputs) > 0 and len(set(task.inputs)) == len(task.inputs),
            f"{where}.inputs", f"needs distinct modalities, got {task.inputs}.")
    for n in task.inputs:
      try:
        mod = modalities.get(n)
      except KeyError as e:
        raise ConfigError(f"config.{where}.inputs: {e.args[0]}") from None
      require(mod.kind in (modalities.IMAGE, modalities.PIXELS), f"{where}.inputs",
              f"{n!r} is a {mod.kind} modality; transfer reads image tokens or pixels.")
    if task.kind == DEPTH:
      require(task.num_classes == 0, f"{where}.num_classes", "depth tasks have no classes.")
    else:
      require(task.num_classes >= 2, f"{where}.num_classes",
              f"a {task.kind} task needs >= 2 classes, got {task.num_classes}.")
    require(0 <= task.label_smoothing < 1, f"{where}.label_smoothing", "must be in [0, 1).")
    require(task.depth_bins == 0 or (task.kind == DEPTH and task.depth_bins >= 2),
            f"{where}.depth_bins", f"must be 0, or >= 2 for a depth task; got {task.depth_bins}"
            f" for a {task.kind} task.")
    return task

  # Fields added after runs were recorded, with the value those runs had.
  LATER_FIELDS = {"depth_bins": 0}

  def settings(self) -> dict:
    """The fields stored with a run; a LATER_FIELDS field at its old value is
    left out, so runs recorded before it still match (m4.jobs.transfer)."""
    return {k: v for k, v in dataclasses.asdict(self).items()
            if not (k in self.LATER_FIELDS and v == self.LATER_FIELDS[k])}

  @property
  def out_channels(self) -> int:
    """Channels of a dense head's output."""
    if self.kind == SEGMENTATION:
      return self.num_classes
    return max(self.depth_bins, 1)

  @property
  def dense(self) -> bool:
    return self.kind != CLASSIFICATION

  def raw_keys(self) -> tuple[str, ...]:
    """The raw-sample keys a batch of this task needs (inputs and target)."""
    keys = [modalities.get(n).data_key for n in self.inputs] + [self.target.split("/")[0]]
    return tuple(dict.fromkeys(keys))

  def targets(self, batch: Mapping[str, Any]):
    """The label array of a batch."""
    value = batch
    for part in self.target.split("/"):
      if not isinstance(value, Mapping) or part not in value:
        raise KeyError(f"config.tasks.{self.name}.target: the batch has no {self.target!r}"
                       f" (keys: {sorted(batch)}).")
      value = value[part]
    return value

  def check_targets(self, targets) -> None:
    """Refuses class labels outside [0, num_classes) (the ignore label aside)."""
    if self.kind == DEPTH:
      return
    t = np.asarray(targets)
    bad = (t < 0) | (t >= self.num_classes)
    if self.kind == SEGMENTATION:
      bad &= t != value_scales.SEMSEG_IGNORE
    if bad.any():
      raise ConfigError(f"config.tasks.{self.name}.num_classes: labels of {self.target!r}"
                        f" include {sorted(set(t[bad].tolist()))[:5]}, outside"
                        f" [0, {self.num_classes}).")


def backbone_config(base: configs.FourMConfig, inputs: Sequence[str],
                    overrides: Mapping[str, Any] | None = None) -> configs.FourMConfig:
  """`base` reading only `inputs` (all their tokens) with a stub decoder.

  Inputs the base model lacks (a new modality at fine-tune time, 4M's and
  MultiMAE's claim) come from the modality registry and follow the base's
  own, in `inputs` order: their embeddings start at random (`new_inputs`).
  `overrides` sets FourMConfig fields that do not change the encoder's
  parameters (dtype, remat, attention_impl, ...).
  """
  added = new_inputs(base, inputs)
  unknown = [n for n in added if n not in modalities.names()]
  require(not unknown, "tasks.*.inputs",
          f"{unknown} are neither inputs of the model (its encoder reads"
          f" {base.encoder_modalities}) nor registered modalities {modalities.names()}.")
  order = tuple(n for n in base.encoder_modalities if n in inputs) + added
  fields = dict(overrides or {})
  fields.pop("size", None)
  known = {f.name for f in dataclasses.fields(configs.FourMConfig)}
  require(not set(fields) - known, "model", f"unknown fields {sorted(set(fields) - known)}.")
  num = sum(input_spec(base, n).num_tokens for n in order)
  return base.replace(**{**fields, "encoder_modalities": order,
                         "decoder_modalities": base.decoder_modalities[:1], "decoder_depth": 1,
                         "num_encoder_tokens": num, "num_decoder_tokens": 1})


def input_spec(base: configs.FourMConfig, name: str) -> modalities.Modality:
  """The spec of an input: the base model's own, else the registry's (a new input,
  or one only the conv net reads)."""
  return base.modality(name) if name in base.modality_names else modalities.get(name)


def new_inputs(base: configs.FourMConfig, inputs: Sequence[str]) -> tuple[str, ...]:
  """The `inputs` that `base` does not read: their embeddings are not pretrained."""
  return tuple(n for n in inputs if n not in base.encoder_modalities)


class TransferModel(nnx.Module):
  """FourM's encoder (all input tokens) followed by a task head."""

  def __init__(self, cfg: configs.FourMConfig, task: TaskSpec, *, image_size: Sequence[int],
               head_hidden: int = 0, head_norm: str = "batch", dense_head: str = "patch",
               head_pool: str = "mean", feature_layers: int = 1, new_inputs: Sequence[str] = (),
               rngs: nnx.Rngs):
    if not 1 <= feature_layers <= cfg.encoder_depth:
      raise ValueError(f"feature_layers {feature_layers} is not in [1, {cfg.encoder_depth}]"
                       " (the encoder's depth).")
    self.task = task
    self.backbone = FourM(cfg, rngs=rngs)
    self.feature_layers = int(feature_layers)  # The head reads the last k layers' outputs.
    self.inputs = tuple(cfg.encoder_modalities)
    self.new_inputs = tuple(new_inputs)  # Not in the pretrained model: never restored.
    # The head fields are checked by name with the protocol's settings
    # (m4.jobs.transfer_protocols.check); the heads refuse bad values too.
    if task.kind == CLASSIFICATION:
      self.head = heads.ClassificationHead(cfg.dim * self.feature_layers, task.num_classes,
                                           hidden=head_hidden, norm=head_norm, pool=head_pool,
                                           rngs=rngs)
      return
    grids = {n: cfg.modality(n).grid for n in self.inputs}
    require(len(set(grids.values())) == 1, f"tasks.{task.name}.inputs",
            f"a dense task needs inputs on one token grid, got {grids}.")
    h, w = next(iter(grids.values()))
    size = tuple(int(s) for s in image_size)
    require(size[0] % h == 0 and size[1] % w == 0 and size[0] // h == size[1] // w,
            "data.image_size", f"{size} is not a whole number of ({h}, {w}) token patches.")
    self.grid = (h, w)
    out = task.out_channels
    if dense_head not in DENSE_HEADS:
      raise ValueError(f"dense head {dense_head!r} is not one of {DENSE_HEADS}.")
    dim = cfg.dim * self.feature_layers * len(self.inputs)
    if dense_head == "upsample":
      self.head = heads.UpsampleHead(dim, out, size[0] // h, norm=head_norm, rngs=rngs)
    elif dense_head == "bilinear":
      self.head = heads.BilinearHead(dim, out, size[0] // h, hidden=head_hidden, norm=head_norm,
                                     rngs=rngs)
    else:
      self.head = heads.DenseHead(dim, out, size[0] // h, hidden=head_hidden, norm=head_norm,
                                  rngs=rngs)

  def decay_rules(self) -> tuple[tuple[str, bool], ...]:
    cfg = self.backbone.cfg
    return decay_rules([n for n in self.inputs if cfg.modality(n).kind == modalities.PIXELS])

  def __call__(self, batch, *, frozen: bool = False, train: bool = False) -> jax.Array:
    """Head outputs: (B, C) logits, (B, H, W, C) logits or (B, H, W, max(depth_bins, 1))
    log-depth or depth-bin scores.

    `frozen` stops gradients at the encoder output (linear probing); `train`
    normalises with batch statistics and updates the running ones.
    """
    out, valid = self.features(batch)
    return self.readout(jax.lax.stop_gradient(out) if frozen else out, valid, train)

  def features(self, batch) -> tuple[jax.Array, jax.Array]:
    """The encoder's output tokens (B, N, k·D), k = `feature_layers`, and which
    of them are real (B, N)."""
    enc = self.backbone.encode(batch, self.backbone.cfg.num_encoder_tokens,
                               last_layers=self.feature_layers)
    return enc.out, enc.slots.valid

  def readout(self, out: jax.Array, valid: jax.Array, train: bool = False) -> jax.Array:
    """The head on the encoder's `features` (what a linear probe trains)."""
    if self.task.kind == CLASSIFICATION:
      return self.head(out, valid, train)
    b, _, d = out.shape
    h, w = self.grid
    grid = out.reshape(b, len(self.inputs), h, w, d).transpose(0, 2, 3, 1, 4)
    return self.head(grid.reshape(b, h, w, len(self.inputs) * d), train)


def encoder_rules(inputs: Sequence[str]) -> tuple[str, ...]:
  """Regexes (`m4.optim`) of the parameter paths, from the model's root, that
  `encode` reads: the encoder's and the inputs' embeddings."""
  names = "|".join(re.escape(n) for n in inputs)
  return (f"backbone/({'|'.join(_ENCODER_KEYS)})(/.*)?",
          f"backbone/({'|'.join(_EMBED_KEYS)})/({names})(/.*)?")


def frozen_rules(protocol: str, inputs: Sequence[str]) -> tuple[tuple[str, bool], ...]:
  """(regex, frozen) rules of what a protocol leaves untrained: it trains the head
  ("probe"), the head and the encoder ("finetune"), or every parameter
  ("supervised", m4.models.convnet)."""
  if protocol == "supervised":
    return ()
  trained = ("head(/.*)?",) + (encoder_rules(inputs) if protocol == "finetune" else ())
  return tuple((r, False) for r in trained) + ((".*", True),)


def trainable_filter(model: TransferModel, protocol: str):
  """nnx filter of the parameters a protocol trains (`frozen_rules`)."""
  frozen = optim.nnx_filter(frozen_rules(protocol, model.inputs))
  return lambda path, value: isinstance(value, nnx.Param) and not frozen(path, value)


def encoder_params(model: TransferModel) -> nnx.State:
  """The backbone parameters `encode` reads that a pretrained init replaces
  (all but the embeddings of `model.new_inputs`)."""
  kept = [n for n in model.inputs if n not in model.new_inputs]
  read = optim.nnx_filter(tuple((r, True) for r in encoder_rules(kept)))
  return nnx.state(model.backbone, lambda p, v: isinstance(v, nnx.Param)
                   and read(("backbone",) + tuple(p), v))


def restore_encoder(model: TransferModel, directory: str, key: str = "model",
                    step: int | None = None) -> None:
  """Loads the encoder parameters of the checkpoint at `directory` into `model`."""
  target = encoder_params(model)
  restored = checkpoints.restore_subtree(directory, target, key=key, step=step)
  nnx.update(model.backbone, restored)


_LINEAR = ("qkv", "proj", "mlp_in", "mlp_out")  # FourM's encoder matrices.


def decay_rules(pixel_inputs: Sequence[str] = ()) -> tuple[tuple[str, bool], ...]:
  """Weight decay as (regex, bool) rules (`m4.optim`), as FourM.decay_rules: the
  matrices of linear layers (encoder blocks, the patch embeddings of
  `pixel_inputs`, the head's and a conv net's kernels); not norms, biases,
  token or modality embeddings."""
  pixels = [re.escape(n) for n in pixel_inputs]
  rules = [(f"backbone/encoder_embed/({'|'.join(pixels)})(/.*)?", True)] if pixels else []
  return tuple(rules) + ((f"backbone/encoder/(.*/)?({'|'.join(_LINEAR)})", True),
                         ("backbone/.*", False), ("(.*/)?kernel", True))


def layer_decay_rules(depth: int, decay: float,
                      new_inputs: Sequence[str] = ()) -> tuple[tuple[str, Any], ...]:
  """Layer-wise learning-rate decay (BEiT/MultiMAE) as `m4.optim` lr_mults.

  With L = `depth` blocks, layer ids are 0 for the token/modality
  embeddings, i + 1 for block i and L + 1 for the final norm and the head;
  a parameter's factor is decay ** (L + 1 - id). Stacked block parameters
  (leading axis `layers`) get one factor per block. The embeddings of
  `new_inputs` start at random, so they train at the full rate.
  """
  names = "|".join(re.escape(n) for n in new_inputs)
  new = ((f"backbone/({'|'.join(_EMBED_KEYS)})/({names})(/.*)?", 1.0),) if new_inputs else ()
  return new + ((f"backbone/({'|'.join(_EMBED_KEYS)})(/.*)?", decay ** (depth + 1)),
                ("backbone/encoder/.*", tuple(decay ** (depth - i) for i in range(depth))))


class EncoderInputs:
  """Raw image batches -> the masked batch the encoder reads (numpy).

  For each input modality: IMAGE modalities are tokenized from their raw key
  (`modality.data_key`) by `tokenizers[name]` (anything with
  `encode(images) -> (B, h, w)` ids, e.g. m4.tokenizers.VQTokenizer);
  PIXELS modalities get the normalised image ("symmetric": [0, 1] -> [-1, 1],
  m4.value_scales.normalize; "imagenet": (x - mean) / std per channel, as
  4M's rgb@224). Every token is an input; nothing is a target. `inputs`
  are Modality specs (a model config's) or names in the modality registry.
  """

  def __init__(self, inputs: Sequence[modalities.Modality | str],
               tokenizers: Mapping[str, Any] | None = None, *,
               pixel_normalization: str = "symmetric"):
    require(pixel_normalization in PIXEL_NORMALIZATIONS, "pixel_normalization",
            f"{pixel_normalization!r} is not one of {PIXEL_NORMALIZATIONS}.")
    self.specs = {m.name: m for m in (modalities.get(m) if isinstance(m, str) else m
                                      for m in inputs)}
    self.names = tuple(self.specs)
    self.tokenizers = dict(tokenizers or {})
    self.pixel_normalization = pixel_normalization
    for n in self.names:
      if self.specs[n].kind == modalities.IMAGE:
        require(n in self.tokenizers, f"tokenizers.{n}",
                f"input modality {n!r} is made of VQ tokens and needs a tokenizer.")

  def __call__(self, batch: Mapping[str, Any]) -> dict:
    out = {}
    for n in self.names:
      mod = self.specs[n]
      x = batch[mod.data_key]
      b = np.shape(x)[0]
      if mod.kind == modalities.PIXELS:
        tensor = value_scales.pixels(x, self.pixel_normalization)
      else:
        tokens = np.asarray(self.tokenizers[n].encode(x))
        if tokens.shape[1:] != tuple(mod.grid):
          raise ValueError(f"tokenizer of {n!r} gave tokens of shape {tokens.shape[1:]},"
                           f" its modality says {tuple(mod.grid)}.")
        tensor = tokens.reshape(b, -1).astype(np.int32)
      out[n] = {"tensor": tensor,
                "input_mask": np.ones((b, mod.num_tokens), bool),
                "target_mask": np.zeros((b, mod.num_tokens), bool),
                "decoder_attention_mask": np.zeros((b, mod.num_tokens), np.int32)}
    return out


def predictions(task: TaskSpec, outputs: jax.Array) -> jax.Array:
  """Head outputs -> predictions: class ids, per-pixel class ids or metres."""
  if task.kind == DEPTH:
    return heads.depth_metres(heads.log_depth(outputs, task.depth_bins))
  return jnp.argmax(outputs, axis=-1).astype(jnp.int32)


def loss(task: TaskSpec, outputs: jax.Array, targets: jax.Array) -> jax.Array:
  if task.kind == CLASSIFICATION:
    return heads.classification_loss(outputs, targets, task.label_smoothing)
  if task.kind == SEGMENTATION:
    return heads.segmentation_loss(outputs, targets)
  return heads.depth_loss(heads.log_depth(outputs, task.depth_bins), targets)
