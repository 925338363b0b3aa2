"""4M's masking: Dirichlet token budgets, image token masks, span-masked text.

Runs per sample, in numpy, in grain workers:

    masker = masking.Masking(config.masking)
    ds = pipeline.make_dataset(config.data, "train", seed=config.seed, training=True,
                               transforms=[tokenize_images, masker])
    # or any grain dataset: ds.random_map(masker, seed=...) (per-index RNG);
    # or outside grain: masker.mask_with_seed(sample, seed=0, index=i)

The input sample holds, under each modality's name, an int token grid
(h, w) (or its h*w flattening) for image modalities, the (H, W, C) image
(uint8, or float in [0, 1]) for pixel modalities (encoder inputs only, as
4M's `rgb@224`: a budget of patches, never targets), and for sequence
modalities either the raw text (a str, tokenized here with the modality's text
tokenizer by `TextTokenizer.encode_padded`: word pieces + [EOS], cut to
`num_tokens`, [PAD]s) or such padded ids already. A modality missing from the
sample gets no budget and comes out all padding. The output is one entry of
the masked batch, `{name: {tensor, input_mask, target_mask,
decoder_attention_mask}}` for every name in `config.modalities`, plus the
sample's other keys unchanged (`id`, `valid`, ...); batching stacks them.
Masks are True = selected (4M's are True = not selected).

Per sample, as 4M's `UnifiedMasking` does:
  1. pick a mixture component by its weight (components with no input or no
     target alpha on the sample's modalities are skipped);
  2. input budgets: Dirichlet(input alphas of the present modalities) x the
     total input budget (uniform in [min_input_tokens, num_input_tokens]),
     floored; the tokens lost by flooring go one by one to the argmax of
     further Dirichlet draws; then clipped to each modality's tokens
     (0 where its registry roles exclude input). Modalities with alpha 0 get
     nothing (4M clamps alphas to 1e-9, which amounts to the same);
  3. target budgets the same way with the target alphas and total; an image
     target is limited to the tokens that are not inputs;
  4. images: one random permutation of the grid gives the inputs, then the
     targets (disjoint); `decoder_attention_mask` holds the number of targets
     at the first target position; pixels: a random set of input patches,
     the tensor is the image scaled by `m4.value_scales.pixels`;
  5. sequences: T5 span masking. Each token is kept with probability p
     (uniform in [0, 1) for keep="random", 1 for "all", 0 or 1 for "binary");
     each run of dropped tokens becomes one sentinel [S_k] in the input
     (k = 1, 2, ... as in 4M, whose first span is [S_1]); the target is
     "[S_1] span_1 [S_2] span_2 ... [S_{m+1}]". While the input is longer
     than its budget, p *= keep_prob_decay and it is redrawn (input budget 0:
     everything is a target). A target longer than its budget is cut as 4M
     cuts it: from a random sentinel (not the last), `budget` tokens if that
     many follow it, else from the earliest sentinel whose tail fits.
     The tensor (2 * (num_tokens + 1),) holds the input at 0.. and the
     target from the input budget on; `decoder_attention_mask` is 1 on
     target positions.

config.masking fields (all required; `preset()` builds 4M-7's mixture):
  modalities: names, in batch order (registry entries of kind image/sequence).
  num_input_tokens, num_target_tokens: the totals (the model's encoder and
    decoder slots per sample).
  min_input_tokens, min_target_tokens: lower ends of the per-sample totals
    (equal to the num_* for fixed totals, as in 4M's default).
  keep_prob_decay: 0.9 in 4M.
  mixture: {component name: {weight, input_alphas: {modality: alpha},
    target_alphas: {modality: alpha}, keep: {sequence modality: scheme}}}.
  condition_dropout (optional; absent = off, as `preset()` writes it):
    {all: p, per_modality: p}. For classifier-free guidance (Ho & Salimans;
    4M's generation uses it): after masking, with probability `all` a
    sample loses every input (an unconditional sample), otherwise each
    modality with inputs loses all of them with probability `per_modality`.
    Targets are unchanged. Both 0 draws nothing, so masks equal those of a
    config without it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import grain
import ml_collections
import numpy as np

from m4 import modalities as modalities_lib
from m4 import value_scales
from m4.tokenizers import text as text_lib

KEEP_SCHEMES = ("random", "all", "binary")
_STREAM = 0x6D61736B  # "mask": separates masking's random stream from others.


def preset(name: str, *, num_input_tokens: int, num_target_tokens: int,
           modalities: Sequence[str] = ("rgb", "depth", "semseg", "caption"),
           rgb: str = "rgb") -> ml_collections.ConfigDict:
  """A `config.masking` with one of 4M's mixtures, for the given modalities.

  "4m7" is 4M-7's `mix_mod7_all2all_rgb2all_a0.5`: half the samples are
  "RGB to all" (input alpha 1000 on `rgb`, 0 elsewhere; target alphas 0.5),
  half "all to all" (input and target alphas 0.5). `rgb` names the RGB input:
  with a pixel modality (4M's `rgb@224`; m4's `rgb_pixels`) the RGB tokens
  are a target like the others, as in 4M-7. With the RGB tokens as the input,
  "RGB to all" gives them target alpha 0 (their share would be clipped away
  whenever the input budget covers the grid). "all2all" is the second
  component alone. Alphas follow the registry roles (0 where a role is not
  allowed); sequences use keep="random", as 4M-7.
  """
  mods = modalities_lib.get_many(modalities)

  def alphas(role, value, only=None):
    return {n: (float(value) if role in m.roles and (only is None or n == only) else 0.0)
            for n, m in mods.items()}

  def keep():
    return {n: "random" for n, m in mods.items() if m.is_sequence}

  all2all = dict(weight=1.0, input_alphas=alphas(modalities_lib.INPUT, 0.5),
                 target_alphas=alphas(modalities_lib.TARGET, 0.5), keep=keep())
  if name == "all2all":
    mixture = {"all2all": all2all}
  elif name == "4m7":
    if rgb not in mods:
      raise ValueError(f"masking preset '4m7': the RGB modality {rgb!r} is not in {list(mods)}.")
    target_alphas = alphas(modalities_lib.TARGET, 0.5)
    target_alphas[rgb] = 0.0  # Pixels are never targets; RGB tokens in are not out.
    rgb2all = dict(weight=1.0, input_alphas=alphas(modalities_lib.INPUT, 1000.0, only=rgb),
                   target_alphas=target_alphas, keep=keep())
    mixture = {"rgb2all": rgb2all, "all2all": all2all}
  else:
    raise ValueError(f"unknown masking preset {name!r}; known: '4m7', 'all2all'.")
  return ml_collections.ConfigDict(dict(
      modalities=tuple(modalities), num_input_tokens=num_input_tokens,
      num_target_tokens=num_target_tokens, min_input_tokens=num_input_tokens,
      min_target_tokens=num_target_tokens, keep_prob_decay=0.9, mixture=mixture,
      condition_dropout=dict(all=0.0, per_modality=0.0)))


def _error(field: str, message: str):
  return ValueError(f"config.masking.{field}: {message}")


def _field(config, field: str):
  try:
    return config[field]
  except (KeyError, AttributeError):
    raise _error(field, "missing (see m4/data/masking.py for the fields).") from None


def dirichlet_budget(rng: np.random.Generator, alphas: np.ndarray, total: int) -> np.ndarray:
  """int64 budgets summing to `total`: floor(Dirichlet x total) + argmax draws.

  Only entries with a positive alpha get tokens.
  """
  budget = np.zeros(alphas.shape, np.int64)
  (active,) = np.nonzero(alphas > 0)
  if total <= 0 or active.size == 0:
    return budget
  if active.size == 1:
    budget[active[0]] = total
    return budget
  a = alphas[active]
  share = np.floor(rng.dirichlet(a) * total).astype(np.int64)
  missing = total - int(share.sum())
  if missing > 0:
    share += np.bincount(rng.dirichlet(a, size=missing).argmax(-1), minlength=active.size)
  budget[active] = share
  return budget


def span_mask(ids: np.ndarray, keep: np.ndarray, sentinel_ids: np.ndarray):
  """T5 span masking of `ids` (n,) given which tokens are kept (n,) bool.

  Returns (input, target) int32 arrays: the input has the kept tokens and one
  sentinel per run of dropped tokens; the target has each sentinel followed by
  its run, then one more sentinel. Sentinels are sentinel_ids[1], [2], ...
  """
  ids = np.asarray(ids, np.int32)
  dropped = ~keep
  starts = dropped & ~np.concatenate([[False], dropped[:-1]])
  span = np.cumsum(starts)  # The 1-based span of each dropped token.
  sentinels = sentinel_ids[span].astype(np.int32)
  inp = np.where(keep, ids, sentinels)[keep | starts]
  pairs = np.stack([sentinels, ids], axis=1)  # (n, 2): [sentinel, token].
  target = np.concatenate([pairs[np.stack([starts, dropped], axis=1)],
                           [sentinel_ids[span[-1] + 1]]])
  return inp, target.astype(np.int32)


def merge_spans(input_ids, target_ids, is_sentinel) -> np.ndarray:
  """The sequence span masking came from: each input sentinel -> its span.

  `is_sentinel` maps an id array to a bool array (e.g.
  `TextTokenizer.is_sentinel`). A sentinel whose span is not in the target
  (a cut target) gives nothing, as 4M's `merge_span_masking`.
  """
  input_ids = np.asarray(input_ids)
  target_ids = np.asarray(target_ids)
  spans, current = {}, None
  for t, s in zip(target_ids.tolist(), is_sentinel(target_ids).tolist()):
    if s:
      current = t
      spans.setdefault(t, [])
    elif current is not None:
      spans[current].append(t)
  out = []
  for t, s in zip(input_ids.tolist(), is_sentinel(input_ids).tolist()):
    out.extend(spans.get(t, []) if s else [t])
  return np.asarray(out, np.int32)


class Masking(grain.transforms.RandomMap):
  """4M's masking of one sample (module docstring), configured by `config.masking`."""

  def __init__(self, config: Mapping[str, Any],
               text_tokenizers: Mapping[str, text_lib.TextTokenizer] | None = None):
    """Checks `config` (errors name the field) and loads the text tokenizers.

    Args:
      config: `config.masking`.
      text_tokenizers: per sequence modality; by default each is loaded by
        the registry entry's `tokenizer` name (`tokenizers/<name>.json`).
    """
    names = tuple(_field(config, "modalities"))
    if not names or len(set(names)) != len(names):
      raise _error("modalities", f"must be distinct modality names, got {names}.")
    try:
      self.modalities = [modalities_lib.get(n) for n in names]
    except KeyError as e:
      raise _error("modalities", str(e)) from None
    self.names = names
    self.num_input_tokens = int(_field(config, "num_input_tokens"))
    self.num_target_tokens = int(_field(config, "num_target_tokens"))
    self.min_input_tokens = int(_field(config, "min_input_tokens"))
    self.min_target_tokens = int(_field(config, "min_target_tokens"))
    if not 0 <= self.min_input_tokens <= self.num_input_tokens or self.num_input_tokens < 1:
      raise _error("min_input_tokens", f"need 0 <= min_input_tokens ({self.min_input_tokens})"
                   f" <= num_input_tokens ({self.num_input_tokens}), num_input_tokens >= 1.")
    if not 0 <= self.min_target_tokens <= self.num_target_tokens:
      raise _error("min_target_tokens", f"need 0 <= min_target_tokens ({self.min_target_tokens})"
                   f" <= num_target_tokens ({self.num_target_tokens}).")
    self.keep_prob_decay = float(_field(config, "keep_prob_decay"))
    if not 0.0 < self.keep_prob_decay < 1.0:
      raise _error("keep_prob_decay", f"must be in (0, 1), got {self.keep_prob_decay}.")
    self._parse_mixture(_field(config, "mixture"))
    drop = config.get("condition_dropout") if hasattr(config, "get") else None
    drop = dict(drop or {"all": 0.0, "per_modality": 0.0})
    if set(drop) != {"all", "per_modality"}:
      raise _error("condition_dropout", f"needs exactly the fields 'all' and 'per_modality';"
                   f" got {sorted(drop)}.")
    self.drop_all, self.drop_modality = float(drop["all"]), float(drop["per_modality"])
    for k, v in drop.items():
      if not 0.0 <= float(v) <= 1.0:
        raise _error(f"condition_dropout.{k}", f"must be a probability in [0, 1], got {v}.")

    roles = [m.roles for m in self.modalities]
    self._num_tokens = np.array([m.num_tokens for m in self.modalities], np.int64)
    self._can_input = np.array([modalities_lib.INPUT in r for r in roles])
    self._can_target = np.array([modalities_lib.TARGET in r for r in roles])
    self._is_image = np.array([m.is_image for m in self.modalities])
    self._plans = {}  # present.tobytes() -> _plan(present).

    self.text_tokenizers = {}
    for m in self.modalities:
      if not m.is_sequence:
        continue
      tok = (text_tokenizers or {}).get(m.name) or text_lib.load(m.tokenizer)
      if tok.vocab_size > m.vocab_size:
        raise _error("modalities", f"{m.name!r}: text tokenizer {tok.path} has {tok.vocab_size}"
                     f" ids, more than the registry's vocab_size {m.vocab_size}.")
      # Spans alternate with kept tokens: at most ceil(n / 2) spans + 1 closing sentinel.
      if tok.num_sentinels < math.ceil(m.num_tokens / 2) + 2:
        raise _error("modalities", f"{m.name!r}: {m.num_tokens} tokens need"
                     f" {math.ceil(m.num_tokens / 2) + 2} sentinels, {tok.path} has"
                     f" {tok.num_sentinels}.")
      self.text_tokenizers[m.name] = tok

  def _parse_mixture(self, mixture):
    if not mixture:
      raise _error("mixture", "needs at least one component.")
    self.component_names = tuple(mixture.keys())
    weights, input_alphas, target_alphas, keeps = [], [], [], []
    for c in self.component_names:
      comp = mixture[c]
      where = f"mixture.{c}"
      weights.append(float(comp["weight"]) if "weight" in comp else -1.0)
      if not weights[-1] >= 0:
        raise _error(f"{where}.weight", "must be given and >= 0.")
      for key, role, out in (("input_alphas", modalities_lib.INPUT, input_alphas),
                             ("target_alphas", modalities_lib.TARGET, target_alphas)):
        alphas = comp[key] if key in comp else None
        if alphas is None or set(alphas.keys()) != set(self.names):
          got = sorted(alphas.keys()) if alphas is not None else None
          raise _error(f"{where}.{key}", f"must give an alpha for each of {list(self.names)};"
                       f" got {got}.")
        row = np.array([float(alphas[n]) for n in self.names])
        for n, m, a in zip(self.names, self.modalities, row):
          if not a >= 0:
            raise _error(f"{where}.{key}.{n}", f"alpha must be >= 0, got {a}.")
          if a > 0 and role not in m.roles:
            raise _error(f"{where}.{key}.{n}", f"is {a}, but the registry allows {n!r}"
                         f" only as {m.roles}.")
        out.append(row)
      keep = comp["keep"] if "keep" in comp else {}
      row = []
      for m in self.modalities:
        scheme = keep[m.name] if m.is_sequence and m.name in keep else None
        if m.is_sequence and scheme not in KEEP_SCHEMES:
          raise _error(f"{where}.keep.{m.name}", f"must be one of {KEEP_SCHEMES}, got {scheme!r}.")
        row.append(scheme)
      keeps.append(row)
    self._weights = np.array(weights)
    if self._weights.sum() <= 0:
      raise _error("mixture", "the component weights sum to 0.")
    self._input_alphas = np.stack(input_alphas)  # (components, modalities)
    self._target_alphas = np.stack(target_alphas)
    self._keep = keeps

  # --- budgets ---

  def present(self, sample: Mapping[str, Any]) -> np.ndarray:
    """bool (modalities,): which modalities the sample has."""
    return np.array([sample.get(m.name) is not None for m in self.modalities])

  def _plan(self, present: np.ndarray):
    """What the budgets of samples with these modalities are drawn from (cached)."""
    key = present.tobytes()
    plan = self._plans.get(key)
    if plan is None:
      in_alphas = self._input_alphas * present
      tgt_alphas = self._target_alphas * present
      has_targets = (tgt_alphas > 0).any(1) | (self.num_target_tokens == 0)
      weights = self._weights * ((in_alphas > 0).any(1) & has_targets)
      if weights.sum() <= 0:
        have = [n for n, p in zip(self.names, present) if p]
        raise ValueError(f"masking: no component of config.masking.mixture"
                         f" {list(self.component_names)} has input (and target) alphas on the"
                         f" sample's modalities {have}.")
      cap_in = np.where(present & self._can_input, self._num_tokens, 0)
      can_target = present & self._can_target
      plan = (np.cumsum(weights / weights.sum()), in_alphas, tgt_alphas, cap_in, can_target)
      self._plans[key] = plan
    return plan

  def sample_budgets(self, rng: np.random.Generator, present: np.ndarray):
    """Draws (component, input budgets, target budgets) for one sample.

    Budgets are int64 (modalities,), already clipped to the modalities'
    tokens and roles; absent modalities get 0.
    """
    cum_weights, in_alphas, tgt_alphas, cap_in, can_target = self._plan(np.asarray(present, bool))
    c = min(int(np.searchsorted(cum_weights, rng.random(), side="right")), len(cum_weights) - 1)
    total_in = int(rng.integers(self.min_input_tokens, self.num_input_tokens + 1))
    total_tgt = int(rng.integers(self.min_target_tokens, self.num_target_tokens + 1))
    budget_in = np.minimum(dirichlet_budget(rng, in_alphas[c], total_in), cap_in)
    cap_tgt = np.where(self._is_image, self._num_tokens - budget_in, self._num_tokens)
    budget_tgt = np.minimum(dirichlet_budget(rng, tgt_alphas[c], total_tgt), cap_tgt * can_target)
    return c, budget_in, budget_tgt

  # --- per modality ---

  def _image(self, rng, m, value, budget_in, budget_tgt):
    n = m.num_tokens
    entry = _empty(n)
    if value is None:
      return entry
    tokens = np.asarray(value)
    if tokens.size != n or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"masking: sample[{m.name!r}] must be the {m.grid} int token grid of"
                       f" modality {m.name!r} (tokenize images before masking); got"
                       f" {tokens.dtype} {tokens.shape}.")
    order = rng.permutation(n)
    entry["tensor"] = tokens.reshape(n).astype(np.int32)
    entry["input_mask"][order[:budget_in]] = True
    targets = order[budget_in:budget_in + budget_tgt]
    entry["target_mask"][targets] = True
    if budget_tgt:
      entry["decoder_attention_mask"][targets.min()] = budget_tgt
    return entry

  def _pixels(self, rng, m, value, budget_in):
    entry = _empty(m.num_tokens)
    if value is None:
      return entry
    image = np.asarray(value)
    h, w = m.grid
    if image.ndim != 3 or image.shape[0] % h or image.shape[1] % w:
      raise ValueError(f"masking: sample[{m.name!r}] must be an (H, W, C) image of whole"
                       f" {m.grid} patches; got {image.dtype} {image.shape}.")
    entry["tensor"] = value_scales.pixels(image)
    entry["input_mask"][rng.permutation(m.num_tokens)[:budget_in]] = True
    return entry

  def _sequence_ids(self, m, value) -> np.ndarray:
    tok = self.text_tokenizers[m.name]
    if isinstance(value, (str, bytes)):
      value = value.decode() if isinstance(value, bytes) else value
      return tok.encode_padded(value, m.num_tokens)
    ids = np.asarray(value)
    if ids.shape != (m.num_tokens,) or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"masking: sample[{m.name!r}] must be a str or ({m.num_tokens},)"
                       f" int ids padded with [PAD]; got {ids.dtype} {ids.shape}.")
    return ids

  def _sequence(self, rng, m, value, keep_scheme, budget_in, budget_tgt):
    length = 2 * (m.num_tokens + 1)
    entry = _empty(length)
    if value is None:
      return entry
    tok = self.text_tokenizers[m.name]
    padded = self._sequence_ids(m, value)
    n = int(np.count_nonzero(padded != tok.pad_id))
    ids = padded[:n]
    if n == 0 or (ids == tok.pad_id).any():
      raise ValueError(f"masking: sample[{m.name!r}] must be non-empty ids"
                       f" followed by [PAD]s only; got {padded.tolist()}.")
    sentinel_ids = np.arange(tok.num_sentinels) + text_lib.FIRST_SENTINEL_ID
    if budget_in == 0:
      inp, target = span_mask(ids, np.zeros(n, bool), sentinel_ids)
      inp = inp[:0]
    else:
      keep_prob = {"random": lambda: rng.random(), "all": lambda: 1.0,
                   "binary": lambda: float(rng.integers(2))}[keep_scheme]()
      inp, target = span_mask(ids, rng.random(n) < keep_prob, sentinel_ids)
      while len(inp) > budget_in:
        keep_prob *= self.keep_prob_decay
        inp, target = span_mask(ids, rng.random(n) < keep_prob, sentinel_ids)
    if len(target) > budget_tgt:
      target = cut_target(rng, target, tok.is_sentinel(target), budget_tgt)
    entry["tensor"][:len(inp)] = inp
    entry["input_mask"][:len(inp)] = True
    where = slice(budget_in, budget_in + len(target))
    entry["tensor"][where] = target
    entry["target_mask"][where] = True
    entry["decoder_attention_mask"][where] = 1
    return entry

  # --- the transform ---

  def __call__(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict:
    """Masks one sample with `rng` (module docstring).

    Returns {name: entry} for the masked modalities, plus the sample's other
    keys as they are (e.g. `id`, and `valid` of evaluation padding).
    """
    present = self.present(sample)
    c, budget_in, budget_tgt = self.sample_budgets(rng, present)
    out = {k: v for k, v in sample.items() if k not in self.names}
    for i, m in enumerate(self.modalities):
      value = sample[m.name] if present[i] else None
      if m.is_image:
        out[m.name] = self._image(rng, m, value, int(budget_in[i]), int(budget_tgt[i]))
      elif m.kind == modalities_lib.PIXELS:
        out[m.name] = self._pixels(rng, m, value, int(budget_in[i]))
      else:
        out[m.name] = self._sequence(rng, m, value, self._keep[c][i], int(budget_in[i]),
                                     int(budget_tgt[i]))
    if self.drop_all > 0 or self.drop_modality > 0:
      self._drop_conditions(rng, out)
    return out

  def _drop_conditions(self, rng, out) -> None:
    """Condition dropout (module docstring), in place."""
    drop_all = rng.random() < self.drop_all
    for m in self.modalities:
      entry = out[m.name]
      if entry["input_mask"].any() and (drop_all or rng.random() < self.drop_modality):
        entry["input_mask"][:] = False

  def random_map(self, element, rng: np.random.Generator) -> dict:
    """grain's entry point: `rng` comes from the dataset seed and the index."""
    # A stream of its own, so another random_map with the same seed (e.g. the
    # crops) does not draw the same numbers.
    return self(element, np.random.default_rng([_STREAM, *rng.integers(2**32, size=2).tolist()]))

  def mask_with_seed(self, sample: Mapping[str, Any], seed: int, index: int) -> dict:
    """Deterministic masking of `sample` from (seed, index), outside grain."""
    return self(sample, np.random.default_rng([_STREAM, seed, index]))


def _empty(length: int) -> dict:
  return {"tensor": np.zeros((length,), np.int32),
          "input_mask": np.zeros((length,), bool),
          "target_mask": np.zeros((length,), bool),
          "decoder_attention_mask": np.zeros((length,), np.int32)}


def cut_target(rng, target: np.ndarray, is_sentinel: np.ndarray, budget: int) -> np.ndarray:
  """4M's cut of an over-long span target to `budget` tokens, at a sentinel."""
  (sentinels,) = np.nonzero(is_sentinel)
  start = sentinels[int(rng.integers(max(1, len(sentinels) - 1)))]
  if len(target) - start >= budget:
    return target[start:start + budget]
  fits = sentinels[len(target) - sentinels <= budget]
  return target[fits[0]:]
