"""What one step of a generation chain does: a target, a scheme, its schedules.

    step = schedules.Step("semseg", scheme="maskgit", num_steps=8)
    steps = schedules.steps_from_config(config.targets, config.decoding)

Schemes (4M's):
  maskgit: every step predicts all tokens still unknown and keeps the most
    confident ones (confidence = probability of the sampled token), as many
    as the token schedule says.
  roar: random-order autoregression: a random order of the unknown tokens,
    the next k of them predicted (and kept) per step.
  autoregressive: sequences (captions), one token at a time with a
    key/value cache, until the closing sentinel or the length limit.

Token schedules give the fraction of a sample's unknown tokens that is known
after step i of S (the last is 1): "linear" (i + 1) / S, "cosine" 4M's
(1 - cos(pi (i + 1) / S)) / 2 (few tokens first and last, most in the middle).
The counts are floor(fraction x unknown + 0.5), per sample, so samples with
different numbers of given tokens (in-painting) share one static schedule.

Temperature schedules scale `temperature` by the progress p_i (fraction known
before step i; token position / length for autoregression): "constant" 1,
"linear" 1 - p_i (4M's), "cosine" (1 + cos(pi p_i)) / 2. A temperature of 0
(or a schedule reaching it) samples greedily.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from m4 import modalities
from m4.workdir import ConfigError

SCHEMES = ("maskgit", "roar", "autoregressive")
TOKEN_SCHEDULES = ("cosine", "linear")
TEMPERATURE_SCHEDULES = ("constant", "linear", "cosine")
GREEDY_BELOW = 1e-6  # Temperatures below this sample greedily.


@dataclasses.dataclass(frozen=True)
class Step:
  """One target modality of a chain and how it is decoded.

  Attributes:
    modality: registry name of the target.
    scheme: one of SCHEMES ("autoregressive" for sequences, the others for
      images).
    num_steps: decoding steps (maskgit, roar); at most the modality's tokens.
    token_schedule: one of TOKEN_SCHEDULES (maskgit; roar uses "linear").
    temperature: sampling temperature at the start (0: greedy).
    temperature_schedule: one of TEMPERATURE_SCHEDULES.
    top_k: keep the k most likely tokens (0: all).
    top_p: keep the smallest set of most likely tokens whose probability
      reaches p (0 or 1: all); after the temperature is applied.
    cfg_scale: classifier-free guidance, logits = uncond + scale (cond -
      uncond); 1 is plain conditional sampling (no second pass, unless
      cfg_conditions are given explicitly).
    cfg_conditions: modalities dropped from the encoder input for the
      unconditional pass; None: every other modality with known tokens.
    max_length: autoregressive: most tokens generated after the opening
      sentinel (None: the modality's num_tokens).
  """

  modality: str
  scheme: str = "maskgit"
  num_steps: int = 8
  token_schedule: str = "cosine"
  temperature: float = 1.0
  temperature_schedule: str = "constant"
  top_k: int = 0
  top_p: float = 0.0
  cfg_scale: float = 1.0
  cfg_conditions: tuple[str, ...] | None = None
  max_length: int | None = None

  def __post_init__(self):
    if self.cfg_conditions is not None:
      object.__setattr__(self, "cfg_conditions", tuple(self.cfg_conditions))
    self.validate()

  def validate(self, where: str | None = None):
    where = where or f"decoding.{self.modality}"

    def need(ok, field, message):
      if not ok:
        raise ConfigError(f"config.{where}.{field}: {message}")

    try:
      mod = modalities.get(self.modality)
    except KeyError as e:
      raise ConfigError(f"config.{where}: {e.args[0]}") from None
    need(self.scheme in SCHEMES, "scheme", f"{self.scheme!r} is not one of {SCHEMES}.")
    need(modalities.TARGET in mod.roles, "modality", f"{self.modality!r} cannot be a target.")
    if mod.is_sequence:
      need(self.scheme == "autoregressive", "scheme",
           f"{self.modality!r} is a sequence: only 'autoregressive' decodes it.")
      limit = self.max_length if self.max_length is not None else mod.num_tokens
      need(1 <= limit <= mod.num_tokens, "max_length", f"must be in [1, {mod.num_tokens}].")
    else:
      need(self.scheme in ("maskgit", "roar"), "scheme",
           f"{self.modality!r} is an image: use 'maskgit' or 'roar'.")
      need(1 <= self.num_steps <= mod.num_tokens, "num_steps",
           f"{self.num_steps} must be in [1, {mod.num_tokens}] (the modality's tokens).")
    need(self.token_schedule in TOKEN_SCHEDULES, "token_schedule",
         f"{self.token_schedule!r} is not one of {TOKEN_SCHEDULES}.")
    need(self.temperature_schedule in TEMPERATURE_SCHEDULES, "temperature_schedule",
         f"{self.temperature_schedule!r} is not one of {TEMPERATURE_SCHEDULES}.")
    need(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}.")
    need(self.top_k >= 0, "top_k", f"must be >= 0, got {self.top_k}.")
    need(0.0 <= self.top_p <= 1.0, "top_p", f"must be in [0, 1], got {self.top_p}.")
    need(math.isfinite(self.cfg_scale), "cfg_scale", "must be finite.")
    for name in self.cfg_conditions or ():
      need(name != self.modality, "cfg_conditions", "cannot hold the target itself.")
      need(name in modalities.names(), "cfg_conditions", f"unknown modality {name!r}.")

  @property
  def guided(self) -> bool:
    """Whether an unconditional pass runs beside the conditional one."""
    return self.cfg_scale != 1.0 or bool(self.cfg_conditions)

  @property
  def length(self) -> int:
    """Autoregressive: the most tokens generated."""
    mod = modalities.get(self.modality)
    return self.max_length if self.max_length is not None else mod.num_tokens

  def known_fractions(self) -> np.ndarray:
    """(S,) fraction of the unknown tokens known after each step (last: 1)."""
    s = self.num_steps
    i = np.arange(1, s + 1, dtype=np.float64)
    schedule = "linear" if self.scheme == "roar" else self.token_schedule
    if schedule == "linear":
      frac = i / s
    else:
      frac = (1.0 - np.cos(np.pi * i / s)) / 2.0
    frac[-1] = 1.0
    return frac

  def temperatures(self, num: int | None = None) -> np.ndarray:
    """(num,) temperature of each step (num: steps, or tokens for autoregression)."""
    if self.scheme == "autoregressive":
      num = self.length if num is None else num
      progress = np.arange(num, dtype=np.float64) / num
    else:
      frac = self.known_fractions()
      progress = np.concatenate([[0.0], frac[:-1]])
    if self.temperature_schedule == "constant":
      factor = np.ones_like(progress)
    elif self.temperature_schedule == "linear":
      factor = 1.0 - progress
    else:
      factor = (1.0 + np.cos(np.pi * progress)) / 2.0
    return (self.temperature * factor).astype(np.float32)

  def done_table(self, num_tokens: int) -> np.ndarray:
    """(num_tokens + 1, S + 1) int32: row n, column i = how many of n unknown
    tokens are known after i steps, floor(fraction x n + 0.5)."""
    frac = np.concatenate([[0.0], self.known_fractions()])
    n = np.arange(num_tokens + 1, dtype=np.float64)[:, None]
    return np.floor(frac[None, :] * n + 0.5).astype(np.int32)

  def max_per_step(self, num_tokens: int) -> int:
    """The most tokens any step decodes, for any number of unknown tokens <= num_tokens."""
    return max(1, int(np.max(np.diff(self.done_table(num_tokens), axis=1))))


def counts(step: Step, num_unknown: int) -> np.ndarray:
  """(S,) tokens each step decodes for a sample with `num_unknown` unknown tokens."""
  return np.diff(step.done_table(num_unknown)[num_unknown]).astype(np.int64)


STEP_FIELDS = tuple(f.name for f in dataclasses.fields(Step) if f.name != "modality")


def step_from_config(modality: str, fields: Mapping[str, Any] | None, where: str) -> Step:
  """A Step from `config.<where>` (a ConfigDict or dict of Step fields)."""
  d = dict(fields.to_dict() if hasattr(fields, "to_dict") else (fields or {}))
  unknown = sorted(set(d) - set(STEP_FIELDS))
  if unknown:
    raise ConfigError(f"config.{where}: unknown fields {unknown}; known: {list(STEP_FIELDS)}.")
  if d.get("cfg_conditions") is not None:
    d["cfg_conditions"] = tuple(d["cfg_conditions"])
  if d.get("max_length") in (0, -1):
    d["max_length"] = None
  try:
    step = Step(modality=modality, **d)
  except TypeError as e:
    raise ConfigError(f"config.{where}: {e}") from None
  step.validate(where)
  return step


def steps_from_config(targets: Sequence[str], decoding: Mapping[str, Any]) -> list[Step]:
  """The chain of `config.targets` (in order), each decoded as `config.decoding.<name>`."""
  if not targets:
    raise ConfigError("config.targets: needs at least one modality to generate.")
  if len(set(targets)) != len(targets):
    raise ConfigError(f"config.targets: {tuple(targets)} has duplicates.")
  out = []
  for name in targets:
    if name not in decoding:
      raise ConfigError(f"config.decoding.{name}: missing (how to decode target {name!r}).")
    out.append(step_from_config(name, decoding[name], f"decoding.{name}"))
  return out
