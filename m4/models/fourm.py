"""The 4M encoder-decoder in Flax NNX.

    model = FourM(cfg, rngs=nnx.Rngs(0))
    loss, metrics = model(batch)                 # training
    enc = model.encode(batch)                    # transfer: per-token features
    dec = model.decode(batch, enc)               # generation: chosen targets
    logits = model.logits(dec.out, "rgb")        # (B, M, V) under rgb's head

`batch` is m4's masked batch: {modality: {tensor, input_mask, target_mask,
decoder_attention_mask}} with masks True = selected. Modalities of the model
that the batch lacks are skipped; other keys are ignored. Without a
decoder_attention_mask, a modality's targets attend as in 4M's batches (all
targets of an image see each other; text targets are causal), which is
handy for generation. Per token, results
equal the reference 4M's (apple/ml-4m FourM.forward); see
/work/shared/4M_REFERENCE.md for the behaviour reproduced.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct

from m4 import modalities
from m4 import sharding
from m4.models import embeddings as E
from m4.models import heads as H
from m4.models import layers
from m4.models.configs import FourMConfig

Array = jax.Array
Batch = Mapping[str, Mapping[str, Any]]
# The matrices of linear layers (the parameters' last key), which get weight decay.
LINEAR = ("qkv", "proj", "cross_q", "cross_kv", "cross_proj", "mlp_in", "mlp_out",
          "context_proj")


@struct.dataclass
class Encoded:
  """Encoder outputs per slot.

  Attributes:
    out: (B, N, D) encoder output after the final LayerNorm ((B, N, k·D) with
      `encode(..., last_layers=k)`).
    emb: (B, N, D) position + modality embedding of each slot (0 at padding).
    slots: which token fills each slot; `slots.modality` indexes
      `cfg.encoder_modalities`.
  """

  out: Array
  emb: Array
  slots: E.Slots


@struct.dataclass
class Decoded:
  """Decoder outputs per slot.

  Attributes:
    out: (B, M, D) decoder output after the final LayerNorm.
    targets: (B, M) int32 target id of each slot (0 at padding).
    slots: `slots.modality` indexes `cfg.decoder_modalities`; for sequences
      `slots.position` p reads id p and predicts id p + 1.
  """

  out: Array
  targets: Array
  slots: E.Slots


class FourM(nnx.Module):
  """4M: per-modality embeddings, a transformer encoder-decoder, heads."""

  def __init__(self, cfg: FourMConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d = cfg.dim
    dt = jnp.dtype(cfg.param_dtype)
    p = lambda init, shape, names: layers.make_param(rngs, init, shape, names, dt)
    emb_init = layers.normal(cfg.init_std)

    self.encoder_embed = nnx.Dict()
    for name in cfg.encoder_modalities:
      mod = self.cfg.modality(name)
      if mod.kind == modalities.PIXELS:
        fan_in = cfg.patch_size * cfg.patch_size * cfg.pixel_channels
        self.encoder_embed[name] = p(layers.xavier_uniform(fan_in, d), (fan_in, d),
                                     (None, "embed"))
      else:
        self.encoder_embed[name] = p(emb_init, (mod.vocab_size, d), ("vocab", "embed"))
    self.decoder_embed = nnx.Dict()
    self.heads = nnx.Dict()
    for name in cfg.decoder_modalities:
      v = self.cfg.modality(name).vocab_size
      # The reference initialises its Linear heads after the embeddings, so a
      # tied decoder embedding ends up Xavier-uniform, an untied one normal.
      init = layers.xavier_uniform(d, v) if cfg.tie_heads else emb_init
      self.decoder_embed[name] = p(init, (v, d), ("vocab", "embed"))
      if not cfg.tie_heads:
        self.heads[name] = p(layers.xavier_uniform(d, v), (v, d), ("vocab", "embed"))
    self.modality_embed = nnx.Dict()
    for name in dict.fromkeys(cfg.encoder_modalities + cfg.decoder_modalities):
      self.modality_embed[name] = p(emb_init, (d,), ("embed",))
    if not cfg.share_modality_embeddings:  # The decoder's own, where both have one.
      self.decoder_modality_embed = nnx.Dict()
      for name in cfg.decoder_modalities:
        if name in cfg.encoder_modalities:
          self.decoder_modality_embed[name] = p(emb_init, (d,), ("embed",))
    self.mask_token = p(emb_init, (d,), ("embed",))

    self.encoder = layers.Blocks(cfg, cfg.encoder_depth, cross=False, rngs=rngs)
    self.encoder_norm_scale = p(layers.constant(1.0), (d,), (None,))
    self.context_proj = p(layers.xavier_uniform(d, d), (d, d), ("embed", None))
    self.context_proj_bias = p(layers.constant(0.0), (d,), (None,))
    self.decoder = layers.Blocks(cfg, cfg.decoder_depth, cross=True, rngs=rngs)
    self.decoder_norm_scale = p(layers.constant(1.0), (d,), (None,))
    if cfg.norm_bias:
      self.encoder_norm_bias = p(layers.constant(0.0), (d,), (None,))
      self.decoder_norm_bias = p(layers.constant(0.0), (d,), (None,))

  def decay_rules(self) -> tuple[tuple[str, bool], ...]:
    """Weight decay as (regex, bool) rules on parameter paths (`m4.optim`): the
    matrices of linear layers, the heads and pixel patch embeddings; not norms,
    biases, token or modality embeddings, the mask token."""
    pixels = [re.escape(n) for n in self.cfg.encoder_modalities
              if self.cfg.modality(n).kind == modalities.PIXELS]
    rules = [("heads/.*", True)]
    if pixels:
      rules.append((f"encoder_embed/({'|'.join(pixels)})(/.*)?", True))
    rules += [("encoder_embed/.*", False), (f"(.*/)?({'|'.join(LINEAR)})", True)]
    return tuple(rules)

  # ---------------------------------------------------------------- helpers

  @property
  def dtype(self):
    return jnp.dtype(self.cfg.dtype)

  def _present(self, batch: Batch, names: tuple[str, ...]) -> list[tuple[int, str]]:
    return [(i, n) for i, n in enumerate(names) if n in batch]

  def _field(self, batch: Batch, name: str, key: str, length: int | None = None) -> Array:
    if key not in batch[name]:
      raise KeyError(f"batch[{name!r}] has no {key!r}; it has {sorted(batch[name])}.")
    x = jnp.asarray(batch[name][key])
    if length is not None and (x.ndim != 2 or x.shape[1] != length):
      raise ValueError(f"batch[{name!r}][{key!r}] has shape {x.shape}; expected (B, {length}).")
    return x

  def _length(self, name: str) -> int:
    """Tokens per sample in the batch tensor of modality `name`."""
    mod = self.cfg.modality(name)
    return 2 * (mod.num_tokens + 1) if mod.kind == modalities.SEQUENCE else mod.num_tokens

  def _norm(self, prefix: str, x: Array) -> Array:
    bias = getattr(self, f"{prefix}_bias", None)
    return layers.layer_norm(x, getattr(self, f"{prefix}_scale")[...],
                             None if bias is None else bias[...], self.cfg.norm_eps)

  def decoder_modality_embedding(self, name: str) -> Array:
    """(D,) modality embedding the decoder adds for modality `name`."""
    own = getattr(self, "decoder_modality_embed", None)
    return (own if own is not None and name in own else self.modality_embed)[name][...]

  def head(self, name: str) -> Array:
    """(V, D) output matrix of decoder modality `name`."""
    return (self.decoder_embed if self.cfg.tie_heads else self.heads)[name][...]

  # ---------------------------------------------------------------- encoder

  def encode(self, batch: Batch, num_tokens: int | None = None, *,
             last_layers: int = 1) -> Encoded:
    """Embeds the inputs of every encoder modality in `batch`, runs the encoder.

    With `last_layers` k > 1, `out` is (B, N, k·D): the outputs of the last k
    layers, each through the final LayerNorm, concatenated from the shallowest
    (as DINOv2's multi-layer segmentation probe reads a ViT); the last D
    channels are the usual output.
    """
    cfg = self.cfg
    num = num_tokens or cfg.num_encoder_tokens
    present = self._present(batch, cfg.encoder_modalities)
    if not present:
      raise ValueError(f"the batch has none of the encoder modalities {cfg.encoder_modalities};"
                       f" it has {sorted(batch)}.")
    masks = [self._field(batch, n, "input_mask", self._length(n)) for _, n in present]
    slots = E.select_slots(masks, [i for i, _ in present], num)
    b = masks[0].shape[0]
    x = jnp.zeros((b, num, cfg.dim), self.dtype)
    emb = jnp.zeros((b, num, cfg.dim), self.dtype)
    for (i, name), mask in zip(present, masks):
      tok, pos = self._encoder_tokens(batch, name, slots, i, mask)
      here = slots.of(i)[..., None]
      x = jnp.where(here, tok.astype(self.dtype), x)
      emb = jnp.where(here, (pos + self.modality_embed[name][...]).astype(self.dtype), emb)
    x = sharding.constrain(x, ("act_batch", "act_length", "act_embed"))
    emb = sharding.constrain(emb, ("act_batch", "act_length", "act_embed"))
    mask = slots.valid[:, None, None, :]
    if last_layers == 1:
      out = self._norm("encoder_norm", self.encoder(x + emb, mask))
      return Encoded(out=out, emb=emb, slots=slots)
    if not 1 <= last_layers <= cfg.encoder_depth:
      raise ValueError(f"last_layers {last_layers} is not in [1, {cfg.encoder_depth}]"
                       " (the encoder's depth).")
    outs = self.encoder(x + emb, mask, every_layer=True)[-last_layers:]
    out = jnp.concatenate([self._norm("encoder_norm", o) for o in outs], axis=-1)
    return Encoded(out=out, emb=emb, slots=slots)

  def _encoder_tokens(self, batch, name, slots, i, input_mask):
    """(token embedding, position embedding) at every slot, for modality `name`."""
    cfg = self.cfg
    mod = self.cfg.modality(name)
    table = self.encoder_embed[name][...]
    if mod.kind == modalities.PIXELS:
      images = jnp.asarray(batch[name]["tensor"])
      patches = E.gather(E.patchify(images, cfg.patch_size), slots, i)
      tok = jnp.einsum("bnp,pd->bnd", patches.astype(self.dtype), table.astype(self.dtype))
      return tok, self._grid_positions(mod, slots)
    ids = E.gather(self._field(batch, name, "tensor", self._length(name)), slots, i)
    tok = jnp.take(table, ids, axis=0)
    if mod.kind == modalities.IMAGE:
      return tok, self._grid_positions(mod, slots)
    seq_pos = E.gather(E.sequence_positions(input_mask), slots, i)
    return tok, jnp.take(E.sincos_1d(self._length(name), cfg.dim), seq_pos, axis=0)

  def _grid_positions(self, mod, slots):
    table = E.sincos_2d(mod.grid[0], mod.grid[1], self.cfg.dim)
    return jnp.take(table, jnp.clip(slots.position, 0, table.shape[0] - 1), axis=0)

  # ---------------------------------------------------------------- decoder

  def context(self, encoded: Encoded) -> Array:
    """What the decoder cross-attends to: Linear(enc_out) + enc_emb."""
    w = self.context_proj[...].astype(self.dtype)
    ctx = jnp.einsum("bnd,de->bne", encoded.out, w) + self.context_proj_bias[...].astype(self.dtype)
    return ctx + encoded.emb

  def decode(self, batch: Batch, encoded: Encoded, num_tokens: int | None = None) -> Decoded:
    """Runs the decoder on the targets of every decoder modality in `batch`."""
    cfg = self.cfg
    num = num_tokens or cfg.num_decoder_tokens
    present = self._present(batch, cfg.decoder_modalities)
    if not present:
      raise ValueError(f"the batch has none of the decoder modalities {cfg.decoder_modalities};"
                       f" it has {sorted(batch)}.")
    selectable, spans_src = [], []
    for _, name in present:
      target = self._field(batch, name, "target_mask", self._length(name)).astype(bool)
      if "decoder_attention_mask" in batch[name]:
        dam = self._field(batch, name, "decoder_attention_mask", self._length(name))
      else:  # 4M's defaults: all targets of an image see each other; text is causal.
        dam = target.astype(jnp.int32)
        if self.cfg.modality(name).kind != modalities.SEQUENCE:
          dam = jnp.where(jnp.arange(dam.shape[1]) == jnp.argmax(target, axis=1)[:, None],
                          jnp.sum(dam, axis=1, keepdims=True), 0)
      if self.cfg.modality(name).kind == modalities.SEQUENCE:
        # Slot p reads id p and predicts id p + 1: both must be targets.
        target, dam = target[:, :-1] & target[:, 1:], dam[:, :-1]
      selectable.append(target)
      spans_src.append(dam)
    slots = E.select_slots(selectable, [i for i, _ in present], num)
    b = selectable[0].shape[0]
    y = jnp.zeros((b, num, cfg.dim), self.dtype)
    targets = jnp.zeros((b, num), jnp.int32)
    rank = jnp.zeros((b, num), jnp.int32)
    span = jnp.zeros((b, num), jnp.int32)
    for (i, name), sel, dam in zip(present, selectable, spans_src):
      here = slots.of(i)
      tok, emb, tgt = self._decoder_tokens(batch, name, slots, i)
      mod_emb = self.decoder_modality_embedding(name)
      y = jnp.where(here[..., None], (tok + (emb + mod_emb)).astype(self.dtype), y)
      targets = jnp.where(here, tgt, targets)
      # Attention spans as 4M's decoder_attention_mask: the token of rank r
      # (among its modality's targets) sees ranks < cumsum(dam)[r].
      sel_i = sel.astype(jnp.int32)
      rank = jnp.where(here, E.gather(jnp.cumsum(sel_i, axis=1) - 1, slots, i), rank)
      span = jnp.where(here, E.gather(jnp.cumsum(sel_i * dam, axis=1), slots, i), span)
    y = sharding.constrain(y, ("act_batch", "act_length", "act_embed"))
    same = slots.modality[:, :, None] == slots.modality[:, None, :]
    seen = rank[:, None, :] < span[:, :, None]
    self_mask = (same & seen & slots.valid[:, :, None] & slots.valid[:, None, :])[:, None]
    cross_mask = encoded.slots.valid[:, None, None, :]
    out = self.decoder(y, self_mask, self.context(encoded), cross_mask)
    return Decoded(out=self._norm("decoder_norm", out), targets=targets, slots=slots)

  def _decoder_tokens(self, batch, name, slots, i):
    """(input token, position embedding, target id) at every slot."""
    cfg = self.cfg
    mod = self.cfg.modality(name)
    ids = self._field(batch, name, "tensor", self._length(name)).astype(jnp.int32)
    if mod.kind == modalities.IMAGE:
      tok = jnp.broadcast_to(self.mask_token[...], slots.position.shape + (cfg.dim,))
      return tok, self._grid_positions(mod, slots), E.gather(ids, slots, i)
    target = batch[name]["target_mask"]
    seq_pos = E.sequence_positions(jnp.asarray(target).astype(bool), limit=mod.num_tokens)
    pos = jnp.take(E.sincos_1d(self._length(name), cfg.dim), E.gather(seq_pos, slots, i), axis=0)
    tok = jnp.take(self.decoder_embed[name][...], E.gather(ids, slots, i), axis=0)
    nxt = E.gather(ids[:, 1:], slots, i)
    return tok, pos, nxt

  # ---------------------------------------------------------------- generation

  def init_cache(self, encoded: Encoded, max_length: int) -> dict[str, Any]:
    """A decoding cache for up to `max_length` tokens of one sequence modality.

    Holds each decoder layer's cross-attention keys / values of the context
    (computed once), room for the self-attention keys / values (one
    head-major array per layer) and the layers' weights, sliced once
    (`Blocks.step`).
    """
    cfg = self.cfg
    b = encoded.out.shape[0]
    layers = self.decoder.layer_params()
    ck, cv = self.decoder.context_kv(self.context(encoded), layers)
    empty = lambda: tuple(jnp.zeros((b, cfg.num_heads, max_length, cfg.head_dim), self.dtype)
                          for _ in range(cfg.decoder_depth))
    return {"k": empty(), "v": empty(), "layers": layers,
            "cross_k": ck, "cross_v": cv, "context_valid": encoded.slots.valid,
            "index": jnp.zeros((), jnp.int32)}

  def decode_step(self, cache: dict[str, Any], name: str, ids: Array,
                  position: Array | int) -> tuple[Array, dict[str, Any]]:
    """Next-token logits of sequence modality `name` (autoregressive, cached).

    Args:
      cache: from `init_cache` (or the previous step).
      name: a decoder modality of kind sequence.
      ids: (B,) the current token of each sample (the first is the target's
        opening sentinel, as in 4M's target sequences).
      position: (B,) or scalar, the token's position among the targets.

    Returns:
      ((B, V) float32 logits for the following token, updated cache). The
      same numbers as `decode` + `logits` on the teacher-forced sequence.
    """
    cfg = self.cfg
    mod = self.cfg.modality(name)
    if mod.kind != modalities.SEQUENCE or name not in cfg.decoder_modalities:
      raise ValueError(f"decode_step needs a sequence decoder modality; got {name!r}.")
    position = jnp.broadcast_to(jnp.asarray(position, jnp.int32), ids.shape)
    position = jnp.where(position >= mod.num_tokens, 0, position)
    tok = jnp.take(self.decoder_embed[name][...], ids.astype(jnp.int32), axis=0)
    pos = jnp.take(E.sincos_1d(self._length(name), cfg.dim), position, axis=0)
    x = (tok + (pos + self.decoder_modality_embedding(name))).astype(self.dtype)[:, None]
    context_mask = cache["context_valid"][:, None, None, :]
    y, cache = self.decoder.step(x, cache, cache["index"], context_mask)
    cache["index"] = cache["index"] + 1
    return self.logits(self._norm("decoder_norm", y[:, 0]), name), cache

  # ---------------------------------------------------------------- heads

  def logits(self, out: Array, name: str) -> Array:
    """(..., D) decoder outputs -> (..., V) float32 logits under `name`'s head."""
    return H.logits(out, self.head(name))

  def loss(self, batch: Batch, decoded: Decoded) -> tuple[Array, dict[str, Array]]:
    """4M's loss and per-modality metrics from decoder outputs.

    "mod": mean over the decoder modalities in the batch of each one's mean
    cross-entropy (one without targets adds 0 but counts in the divisor, as
    the reference); "token": the plain mean over all target tokens (not the
    reference's "token" option, which weights modalities by tokens x vocab).
    """
    cfg = self.cfg
    present = self._present(batch, cfg.decoder_modalities)
    slots = decoded.slots
    local = jnp.full(slots.modality.shape, -1, jnp.int32)
    for j, (i, _) in enumerate(present):
      local = jnp.where(slots.of(i), j, local)
    valid = local >= 0
    counts = jnp.stack([jnp.sum(local == j) for j in range(len(present))]).astype(jnp.float32)
    if cfg.loss_type == "mod":
      per_mod = 1.0 / (jnp.maximum(counts, 1.0) * len(present))
      weights = jnp.where(valid, per_mod[jnp.maximum(local, 0)], 0.0)
    else:
      weights = jnp.where(valid, 1.0 / jnp.maximum(jnp.sum(counts), 1.0), 0.0)
    loss, (ce, correct, count) = H.grouped_cross_entropy(
        decoded.out, [self.head(n) for _, n in present], modality=jnp.maximum(local, 0),
        valid=valid, targets=decoded.targets, weights=weights, chunk=cfg.head_chunk_size,
        cpu_tuned=layers.cpu_tuned(cfg))
    metrics = {"loss": loss}
    for j, (_, name) in enumerate(present):
      metrics[f"loss/{name}"] = ce[j] / jnp.maximum(count[j], 1.0)
      metrics[f"accuracy/{name}"] = correct[j] / jnp.maximum(count[j], 1.0)
      metrics[f"tokens/{name}"] = count[j]
    return loss, metrics

  def __call__(self, batch: Batch, num_encoder_tokens: int | None = None,
               num_decoder_tokens: int | None = None) -> tuple[Array, dict[str, Array]]:
    """Loss and metrics of a masked batch (encode, decode, score)."""
    encoded = self.encode(batch, num_encoder_tokens)
    decoded = self.decode(batch, encoded, num_decoder_tokens)
    return self.loss(batch, decoded)
