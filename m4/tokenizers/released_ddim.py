"""DDIM sampling for 4M's DiVAE decoders (the reference's DDIMScheduler, eta 0).

    sched = Schedule(beta_schedule="linear", prediction_type="sample")
    x0 = sample(denoise, noise, sched, steps=25)   # denoise(x_t, t) -> model output

What it computes, as the reference at eval time:

  schedule   alphas_cumprod of `num_train_timesteps` steps from `linear` (betas
             1e-4 .. 0.02), `scaled_linear` (their square roots spaced
             linearly), `squaredcos_cap_v2` (cosine, betas capped at 0.999) or
             `shifted_cosine:<s>` (sigmoid of the log-SNR -2 (log tan(pi t / 2)
             + log s), clamped to +-15, the last set to 0). With
             `zero_terminal_snr` (not for shifted_cosine) sqrt(alphas_cumprod)
             is shifted and rescaled so the last one is 0 and the first is kept.
  timesteps  for n steps, ratio = T // n: `trailing` (4M's default) T - 1,
             T - 1 - ratio, ... down to >= 0 (so 3 steps of 1000 are 4
             timesteps: 999, 666, 333, 0); `leading` 0, ratio, ... reversed;
             `linspace` round(linspace(T, 1, n)) - 1. Each step goes from t to
             t - ratio (alphas_cumprod 1 below 0).
  step       x0 from the model output (`sample`: the output; `epsilon`:
             (x - sqrt(1 - a) e) / sqrt(a); `v_prediction`: sqrt(a) x -
             sqrt(1 - a) v) and the matching noise; x0 clipped to [-1, 1] when
             `clip` (the reference's `thresholding` with its sample_max_value
             1, or `clip_sample`); the noise is not re-derived from the clipped
             x0. x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) noise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

PREDICTIONS = ("sample", "epsilon", "v_prediction")
MODES = ("trailing", "leading", "linspace")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "shifted_cosine:<shift>")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The reference scheduler's arguments that matter at eval time."""

  num_train_timesteps: int = 1000
  beta_schedule: str = "linear"
  prediction_type: str = "sample"
  clip: bool = True
  zero_terminal_snr: bool = True

  def validate(self) -> "Schedule":
    if self.prediction_type not in PREDICTIONS:
      raise ValueError(f"prediction_type {self.prediction_type!r} is not one of {PREDICTIONS}.")
    alphas_cumprod(self)  # Raises on an unknown beta_schedule.
    return self


def _zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  root = np.sqrt(np.cumprod(1 - betas))
  first, last = root[0], root[-1]
  root = (root - last) * first / (first - last)
  bar = root ** 2
  return 1 - np.concatenate([bar[:1], bar[1:] / bar[:-1]])


def alphas_cumprod(s: Schedule) -> np.ndarray:
  """float32 (num_train_timesteps,): the reference scheduler's alphas_cumprod."""
  n, name = s.num_train_timesteps, s.beta_schedule
  if name.startswith("shifted_cosine:"):
    try:
      shift = float(name.split(":", 1)[1])
    except ValueError:
      raise ValueError(f"beta_schedule {name!r}: the shift is not a number.") from None
    t = np.linspace(0, 1, n)
    with np.errstate(divide="ignore"):
      log_snr = -2 * (np.log(np.tan(np.pi * t / 2)) + np.log(shift))
    log_snr = np.clip(log_snr, -15, 15).astype(np.float32)
    out = 1 / (1 + np.exp(-log_snr.astype(np.float64)))
    out[-1] = 0.0
    return out.astype(np.float32)
  if name == "linear":
    betas = np.linspace(1e-4, 0.02, n)
  elif name == "scaled_linear":
    betas = np.linspace(1e-4 ** 0.5, 0.02 ** 0.5, n) ** 2
  elif name == "squaredcos_cap_v2":
    bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = np.array([min(1 - bar((i + 1) / n) / bar(i / n), 0.999) for i in range(n)])
  else:
    raise ValueError(f"beta_schedule {name!r} is not one of {BETA_SCHEDULES}.")
  betas = betas.astype(np.float32).astype(np.float64)  # The reference's betas are float32.
  if s.zero_terminal_snr:
    betas = _zero_terminal_snr(betas)
  return np.cumprod(1 - betas).astype(np.float32)


def timesteps(num_train_timesteps: int, steps: int, mode: str = "trailing") -> np.ndarray:
  """The reference's DDIM timesteps (int64, descending) for `steps` steps."""
  if not 1 <= steps <= num_train_timesteps:
    raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}.")
  ratio = num_train_timesteps // steps
  if mode == "trailing":
    return np.arange(num_train_timesteps, 0, -ratio).round().astype(np.int64) - 1
  if mode == "leading":
    return (np.arange(steps) * ratio).round()[::-1].astype(np.int64)
  if mode == "linspace":
    return np.linspace(num_train_timesteps, 1, steps).round().astype(np.int64) - 1
  raise ValueError(f"mode {mode!r} is not one of {MODES}.")


def coefficients(s: Schedule, steps: int, mode: str = "trailing") -> dict[str, np.ndarray]:
  """Per step (float32): t, sqrt(a_t), sqrt(1 - a_t), sqrt(a_prev), sqrt(1 - a_prev)."""
  ac = alphas_cumprod(s)
  ts = timesteps(s.num_train_timesteps, steps, mode)
  prev = ts - s.num_train_timesteps // steps
  a = ac[ts]
  a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], np.float32(1.0)).astype(np.float32)
  f = lambda v: np.asarray(v, np.float32)
  return {"t": f(ts), "sqrt_a": f(a ** 0.5), "sqrt_b": f((1 - a) ** 0.5),
          "sqrt_a_prev": f(a_prev ** 0.5), "sqrt_b_prev": f((1 - a_prev) ** 0.5)}


def step(s: Schedule, out: jax.Array, x: jax.Array, c: dict) -> jax.Array:
  """x_t -> x_prev given the model output at t; `c` is one step of `coefficients`."""
  pred = s.prediction_type
  if pred == "sample":
    x0 = out
    eps = (x - c["sqrt_a"] * x0) / c["sqrt_b"]
  elif pred == "epsilon":
    x0 = (x - c["sqrt_b"] * out) / c["sqrt_a"]
    eps = out
  else:
    x0 = c["sqrt_a"] * x - c["sqrt_b"] * out
    eps = c["sqrt_a"] * out + c["sqrt_b"] * x
  if s.clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
  return c["sqrt_a_prev"] * x0 + c["sqrt_b_prev"] * eps


def sample(denoise: Callable[[jax.Array, jax.Array], jax.Array], noise: jax.Array, s: Schedule,
           steps: int, mode: str = "trailing") -> jax.Array:
  """DDIM from `noise` (x_T) to x_0; denoise(x_t, t float32 scalar) -> model output."""
  coefs = {k: jnp.asarray(v) for k, v in coefficients(s, steps, mode).items()}

  def body(x, c):
    return step(s, denoise(x, c["t"]).astype(jnp.float32), x, c), None

  x, _ = jax.lax.scan(body, noise.astype(jnp.float32), coefs)
  return x
