"""A trained VQ tokenizer: raw images <-> int32 token grids, jitted and batched.

    tok = VQTokenizer.from_directory("workdirs/tok_rgb")   # or tokenizers.load
    tokens = tok.encode(rgb)              # (B, 64, 64, 3) -> int32 (B, 8, 8)
    rgb_hat = tok.decode(tokens)          # -> float32 (B, 64, 64, 3) in [0, 1]
    ids, logits = semseg_tok.decode(tokens, return_logits=True)

Inputs and outputs are in raw units (m4's data contract, see
`m4.tokenizers.modality_io`); `encode` checks them on the host first and
raises a ValueError naming the modality and the problem. Inside jitted code
use `encode_traced` / `decode_traced`, which skip those checks.

A tokenizer directory holds `tokenizer.json` (this spec: modality, vocabulary,
grid, image size, model and IO settings) and `checkpoints/` (orbax, written by
the `tokenizer` job); only the model weights are read from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from m4 import checkpoints
from m4 import modalities
from m4 import workdir
from m4.tokenizers import modality_io
from m4.tokenizers import quantizer as quantizer_lib
from m4.tokenizers import vqvae

SPEC_FILE = "tokenizer.json"
FORMAT = "m4.vq_tokenizer.v1"
MODEL_KEY = "model"  # Where the tokenizer job's checkpoints keep the model state.


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  """What it takes to rebuild a tokenizer (stored as tokenizer.json).

  `model` holds VQVAE keyword arguments besides the channel counts, vocabulary
  and downsampling factor (derived from the modality and `image_size`); `io`
  holds `loss_weights` and, for semseg, `num_classes`.
  """

  modality: Mapping[str, Any]  # The registry entry (Modality.to_dict()).
  image_size: tuple[int, int]
  model: Mapping[str, Any]
  io: Mapping[str, Any]
  step: int | None = None
  metrics: Mapping[str, Any] | None = None

  @property
  def name(self) -> str:
    return self.modality["name"]

  def register_modality(self) -> modalities.Modality:
    """The spec's modality, registered (an equal entry is fine; a conflicting one errors)."""
    return modalities.register_from_config({self.name: dict(self.modality)})[0]

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out["format"] = FORMAT
    return out

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str = "tokenizer.json") -> "TokenizerSpec":
    if d.get("format") != FORMAT:
      raise ValueError(f"{where}: format {d.get('format')!r} is not {FORMAT!r}.")
    fields = {f.name for f in dataclasses.fields(cls)}
    missing = {"modality", "image_size", "model", "io"} - set(d)
    if missing:
      raise ValueError(f"{where}: missing fields {sorted(missing)}.")
    d = {k: v for k, v in d.items() if k in fields}
    d["image_size"] = tuple(int(s) for s in d["image_size"])
    step = d.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
      raise ValueError(f"{where}: 'step' must be a checkpoint step (an integer >= 0), got"
                       f" {step!r}.")
    return cls(**d)


def downsample_factor(modality: modalities.Modality, image_size) -> int:
  h, w = (int(s) for s in image_size)
  gh, gw = modality.grid
  if h % gh or w % gw or h // gh != w // gw:
    raise ValueError(f"{modality.name}: image size {(h, w)} is not an equal multiple of the"
                     f" token grid {modality.grid} (modality registry).")
  return h // gh


def build(spec: TokenizerSpec, rngs: nnx.Rngs | None = None):
  """(VQVAE, ModalityIO) for `spec`, freshly initialised."""
  modality = spec.register_modality()
  io = modality_io.make(spec.name, **dict(spec.io))
  model = vqvae.VQVAE(
      in_channels=io.in_channels, out_channels=io.out_channels,
      vocab_size=modality.vocab_size, downsample=downsample_factor(modality, spec.image_size),
      rngs=rngs or nnx.Rngs(0), **dict(spec.model))
  return model, io


class VQTokenizer:
  """Encode raw images of one modality to token grids and back."""

  def __init__(self, model: vqvae.VQVAE, io: modality_io.ModalityIO, spec: TokenizerSpec):
    self.spec = spec
    self.io = io
    self.modality = modalities.get(spec.name)
    self.name = spec.name
    self.grid = tuple(self.modality.grid)
    self.vocab_size = self.modality.vocab_size
    self.image_size = tuple(spec.image_size)
    self._graphdef, self._state = nnx.split(model)
    self._encode = jax.jit(self._encode_fn)
    self._decode = jax.jit(self._decode_fn)
    self._spread_state = None  # The weights on every local device, made on first use.

  @property
  def model(self) -> vqvae.VQVAE:
    return nnx.merge(self._graphdef, self._state)

  @classmethod
  def from_directory(cls, path: str) -> "VQTokenizer":
    spec_path = os.path.join(path, SPEC_FILE)
    if not os.path.exists(spec_path):
      raise FileNotFoundError(f"{path}: no {SPEC_FILE}; is this a trained tokenizer directory?")
    with open(spec_path) as f:
      spec = TokenizerSpec.from_json(json.load(f), where=spec_path)
    abstract = nnx.eval_shape(lambda: build(spec)[0])
    graphdef, target = nnx.split(abstract)
    state = checkpoints.restore_subtree(path, target, key=MODEL_KEY, step=spec.step)
    model = nnx.merge(graphdef, state)
    return cls(model, modality_io.make(spec.name, **dict(spec.io)), spec)

  def save(self, path: str, step: int = 0) -> str:
    """Writes a tokenizer directory (spec + weights) that `from_directory` reads.

    Refuses a directory that already holds a tokenizer (nothing is overwritten).
    """
    if os.path.exists(os.path.join(path, SPEC_FILE)):
      raise FileExistsError(f"{path} already holds a tokenizer ({SPEC_FILE}); not overwriting it.")
    with checkpoints.Checkpointer(os.path.join(path, "checkpoints"), async_save=False) as ckpt:
      ckpt.save(step, {MODEL_KEY: self._state})
    spec = dataclasses.replace(self.spec, step=int(step))
    workdir.write_json(os.path.join(path, SPEC_FILE), spec.to_json())
    return path

  # Traced versions: for use inside other jitted functions (no input checks).
  def _encode_fn(self, state, images):
    model = nnx.merge(self._graphdef, state)
    return model.encode(self.io.prepare(images)).indices

  def _decode_fn(self, state, tokens):
    model = nnx.merge(self._graphdef, state)
    output = model.decode_indices(tokens)
    return self.io.postprocess(output), output

  def encode_traced(self, images) -> jax.Array:
    return self._encode_fn(self._state, images)

  def decode_traced(self, tokens) -> tuple[jax.Array, jax.Array]:
    """Tokens -> (raw images, the model's output: channels or semseg logits)."""
    return self._decode_fn(self._state, tokens)

  def check(self, images) -> np.ndarray:
    """Host-side checks of raw images of any size (ValueError naming the problem)."""
    return self.io.check(images)

  def encode(self, images) -> jax.Array:
    """Raw images (B, H, W[, C]) -> int32 tokens (B, h, w). A batch that splits
    evenly over this process's devices is encoded data-parallel (on a CPU with
    one device per core, m4.sharding.use_cpu_devices, that uses every core)."""
    images = self.io.check(images, self.image_size)
    devices = jax.local_devices()
    if len(devices) == 1 or len(images) % len(devices):
      return self._encode(self._state, images)
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    if self._spread_state is None:
      self._spread_state = jax.device_put(self._state, NamedSharding(mesh, P()))
    tokens = self._encode(self._spread_state, jax.device_put(images, NamedSharding(mesh, P("batch"))))
    return jnp.asarray(np.asarray(tokens))  # On the default device, as the unsplit call's.

  def check_tokens(self, tokens) -> np.ndarray:
    tokens = np.asarray(tokens)
    h, w = self.grid
    if tokens.ndim != 3 or tokens.shape[1:] != (h, w):
      raise ValueError(f"{self.name}: tokens must have shape (B, {h}, {w}), got {tokens.shape}.")
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"{self.name}: tokens must be integers, got dtype {tokens.dtype}.")
    bad = (tokens < 0) | (tokens >= self.vocab_size)
    if bad.any():
      raise ValueError(f"{self.name}: token ids must be in [0, {self.vocab_size});"
                       f" found {modality_io._describe_bad(bad, tokens)}.")  # pylint: disable=protected-access
    return tokens.astype(np.int32)

  def decode(self, tokens, *, return_logits: bool = False):
    """int32 tokens (B, h, w) -> raw images; semseg can also return its logits."""
    images, output = self._decode(self._state, self.check_tokens(tokens))
    if return_logits:
      if self.io.key != "semseg":
        raise ValueError(f"{self.name}: return_logits is for semseg tokenizers only.")
      return images, output
    return images

  def picture(self, decoded) -> tuple[np.ndarray, str]:
    """Decoded outputs -> (cells, kind) for m4.pictures (as ReleasedTokenizer.picture)."""
    return np.asarray(decoded), self.modality.data_key

  def reconstruct(self, images):
    return self.decode(self.encode(images))


def code_usage(tokens, vocab_size: int) -> dict[str, float]:
  """Codebook usage and perplexity of a set of tokens (numpy or jax)."""
  counts = quantizer_lib.assignment_counts(jnp.asarray(tokens), vocab_size)
  return {k: float(v) for k, v in quantizer_lib.code_statistics(counts).items()}
