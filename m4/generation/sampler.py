"""The sampler: chained any-to-any generation with a 4M model, jitted.

    gen = Generator(model)
    state = {"rgb": entries.image_entry("rgb", rgb_tokens)} # given: all tokens known
    steps = [Step("semseg", "maskgit", num_steps=8), Step("caption", "autoregressive")]
    result = gen.generate(state, steps, seed=0)
    result.state["semseg"]["tensor"]                        # (B, 64) int32
    result.state["caption"]["tensor"]                       # (B, L + 1) ids, [PAD] after

A *state* maps modality names to entries `{"tensor", "known"}`:
  image     tensor (B, h*w) int32 tokens; known (B, h*w) bool. Unknown tokens
            are generated, known ones are kept (in-painting) and are encoder
            inputs.
  sequence  tensor (B, L + 1) int32: the caption's input sequence, [PAD]
            after it (L = the modality's num_tokens); known (B, L + 1) marks
            its tokens. Sentinels [S_1], [S_2], ... mark spans to fill; an
            empty input means "write the whole caption" (no caption input
            tokens, as m4's masking gives a caption with no input budget;
            4M's reference feeds a lone [S_1] instead).
  pixels    tensor (B, H, W, C) images; known (B, patches): encoder input only.

Each step of a chain decodes one target with its scheme (`schedules.Step`)
from every entry of the state (`chained=True`: finished targets included),
with classifier-free guidance when `Step.guided` (the unconditional pass has
the condition modalities' inputs dropped, as the masking's condition dropout
trains it; an image step runs it on its own, compact without the
conditions' encoder slots (`condition_slots`), a caption runs both passes
as one batch of 2B). Every scheme is one
jitted function with static shapes. An image step is unrolled over its
steps, each with as many encoder slots as the state gives tokens at that
step and as many decoder slots as it asks for (worked out on the host from
the schedule: `slot_plan`), as 4M's reference gathers its visible and masked
tokens; where the batch's samples differ in what they give or ask, and with
`compact=False`, the slots cover every token that could be (one
`lax.fori_loop` body). The same tokens are drawn either way (each grid
position has its own random number); the tests compare the two. Captions
loop with `lax.while_loop`. Results are deterministic for a given seed and
batch.

Captions are generated as 4M's span targets, "[S_1] span_1 [S_2] ... [S_m+1]",
one token at a time through `FourM.decode_step`'s key/value cache
(`use_cache=False` re-runs the decoder on the whole prefix each token, as
4M's reference does; the tests check both give the same logits), until the
closing sentinel; the spans are then merged into the input
(`masking.merge_spans`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4 import modalities
from m4.generation import entries
from m4.generation import sampling
from m4.generation.schedules import Step

Array = jax.Array
State = dict[str, dict[str, Any]]

# Image schedules up to this many steps get a program per step (`slot_plan`).
MAX_PLANNED_STEPS = 16


# ---------------------------------------------------------------- results


@dataclasses.dataclass
class Result:
  """What `Generator.generate` returns.

  Attributes:
    state: every entry, targets now fully known (numpy).
    filled_at: per image target, (B, N) int32 step at which each token was
      decided (-1: given).
    step_counts: per image target, (B, S) int32 tokens decided at each step.
    targets: per sequence target, (B, length) int32 generated target ids
      after the opening [S_1] (closing sentinel included, [PAD] after it).
    logits: per sequence target, (B, length, V) float32 logits of each
      generated token (only with `return_logits=True`).
    seconds: per target, wall time of its step (device work included).
  """

  state: State
  filled_at: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  step_counts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  targets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  logits: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------- the sampler


def _temperature(temps: np.ndarray, i) -> float | Array:
  """Step i's temperature: a Python float where `i` is one or the schedule is
  constant (sampling then decides greedy or sampled while tracing), else traced."""
  if isinstance(i, int) or np.all(temps == temps[0]):
    return float(temps[i if isinstance(i, int) else 0])
  return jnp.asarray(temps)[i]


def _image_dam(mask: Array) -> Array:
  """4M's image decoder_attention_mask: the number of targets at the first one."""
  n = mask.shape[1]
  first = jnp.argmax(mask, axis=1)
  count = jnp.sum(mask, axis=1, dtype=jnp.int32)
  return jnp.where(jnp.arange(n)[None, :] == first[:, None], count[:, None], 0).astype(jnp.int32)


class Generator:
  """Any-to-any generation with a FourM model (see the module docstring)."""

  def __init__(self, model, compact: bool = True):
    self.cfg = model.cfg
    self.compact = compact
    self.graphdef, self.params = nnx.split(model)
    # Steps and slot counts are static (shapes, loops); the guidance scale is
    # an argument, so every scale of a guided step shares one compiled function.
    self._image = jax.jit(self._image_impl, static_argnames=("step", "plan", "condition_slots"))
    self._sequence = jax.jit(self._sequence_impl,
                             static_argnames=("step", "capacity", "use_cache", "return_logits"))

  def _spec(self, name: str) -> modalities.Modality | None:
    """The model's spec of `name`; None for a modality it lacks (it rides along)."""
    return self.cfg.modality(name) if name in self.cfg.modality_names else None

  # ---- model batches

  def _batch(self, state: State, target: str | None = None, target_mask=None,
             target_ids=None) -> dict:
    """The masked batch of `state`; `target` gets `target_mask` (and, for a
    sequence, `target_ids` in its target half)."""
    batch = {}
    for name, e in state.items():
      if name not in self.cfg.encoder_modalities and name != target:
        continue
      mod = self.cfg.modality(name)  # Skipped above unless the model has it.
      known = e["known"]
      if mod.kind == modalities.PIXELS:
        batch[name] = {"tensor": e["tensor"], "input_mask": known}
        continue
      zeros = jnp.zeros_like(known)
      tmask = target_mask if name == target else zeros
      if mod.is_sequence:
        ids = target_ids if name == target and target_ids is not None else jnp.zeros_like(known,
                                                                                         jnp.int32)
        batch[name] = {
            "tensor": jnp.concatenate([e["tensor"], ids], axis=1),
            "input_mask": jnp.concatenate([known, zeros], axis=1),
            "target_mask": jnp.concatenate([zeros, tmask], axis=1),
            "decoder_attention_mask": jnp.concatenate([zeros, tmask], axis=1).astype(jnp.int32)}
      else:
        batch[name] = {"tensor": e["tensor"], "input_mask": known, "target_mask": tmask,
                       "decoder_attention_mask": _image_dam(tmask)}
    return batch

  def _given(self, state: State, exclude: str | None = None) -> int:
    """Encoder slots for the inputs of `state` (`exclude` left out): an entry
    whose samples all give the same number of tokens gets that many, any
    other (captions of different lengths, different masks) one per token, so
    batches like it share one compiled program; not compact, every entry one
    per token it could give."""
    return sum(self._slots(e) for name, e in state.items()
               if name in self.cfg.encoder_modalities and name != exclude)

  def _slots(self, entry) -> int:
    """An input entry's encoder slots (see `_given`)."""
    known = np.sum(np.asarray(entry["known"]), axis=1)
    same = self.compact and np.all(known == known[0])
    return int(known[0]) if same else entries.known_shape(entry)

  def condition_slots(self, state: State, step: Step) -> int:
    """Encoder slots a guided image step's unconditional pass does without:
    those of its conditions (compact; 0 otherwise: both passes get the
    conditional pass's slots)."""
    if not (self.compact and step.guided):
      return 0
    return sum(self._slots(state[c]) for c in step.cfg_conditions
               if c in self.cfg.encoder_modalities)

  def slot_plan(self, state: State, step: Step) -> tuple[tuple[int, int], ...]:
    """(encoder slots, decoder slots) of each step of image target `step`.

    Compact (the default): the state's inputs as `_given` counts them and,
    when every sample has the same number of unknown target tokens, exactly
    the target tokens the schedule has decided before the step (encoder) and
    asks for at it (decoder: maskgit every unknown token, roar the step's
    share). Otherwise, and for schedules longer than MAX_PLANNED_STEPS (their
    programs would grow with the steps), every step gets the inputs' slots
    and one per target token (encoder) and the most any step can ask
    (decoder). Not compact, `_given` gives every input one slot per token.
    """
    name = step.modality
    n_tok = self.cfg.modality(name).num_tokens
    target_in = name in self.cfg.encoder_modalities
    unknown = np.sum(~np.asarray(state[name]["known"], bool), axis=1)
    if (not self.compact or step.num_steps > MAX_PLANNED_STEPS
        or not np.all(unknown == unknown[0])):
      dec = step.max_per_step(n_tok) if step.scheme == "roar" else n_tok
      enc = self._given(state, exclude=name) + (n_tok if target_in else 0)
      return ((max(1, enc), dec),) * step.num_steps
    u = int(unknown[0])
    done = step.done_table(n_tok)[u]  # (S + 1,) decided after each step.
    given = self._given(state, exclude=name)
    plan = []
    for i in range(step.num_steps):
      enc = given + (n_tok - u + int(done[i]) if target_in else 0)
      dec = int(done[i + 1] - done[i]) if step.scheme == "roar" else u - int(done[i])
      plan.append((max(1, enc), max(1, dec)))
    return tuple(plan)

  def sequence_capacity(self, state: State) -> int:
    """Encoder slots of a sequence step: the state's inputs as `_given` counts them."""
    return max(1, self._given(state))

  @staticmethod
  def _unconditional(state: State, conditions: Sequence[str]) -> State:
    """`state` with the `conditions` dropped from the encoder input."""
    return {n: dict(e, known=jnp.zeros_like(e["known"])) if n in conditions else e
            for n, e in state.items()}

  @classmethod
  def _doubled(cls, state: State, conditions: Sequence[str]) -> State:
    """[conditional; unconditional] along the batch (a caption's one pass for both)."""
    uncond = cls._unconditional(state, conditions)
    return {n: {"tensor": jnp.concatenate([e["tensor"], e["tensor"]], axis=0),
                "known": jnp.concatenate([e["known"], uncond[n]["known"]], axis=0)}
            for n, e in state.items()}

  def _encode(self, model, state: State, step: Step, capacity: int):
    """Encoder output for `state` (doubled when guided) in `capacity` slots."""
    if step.guided:
      state = self._doubled(state, step.cfg_conditions)
    batch = self._batch(state)
    return model.encode(batch, capacity), state

  # ---- images: MaskGIT and ROAR

  def _image_logits(self, model, state, step, scale, target_mask, capacity, num_slots,
                    condition_slots=0):
    """(B, slots, V) logits of the target tokens in `target_mask`, their
    positions and validity (B, slots); the encoder has `capacity` slots (a
    guided step's unconditional pass, run on its own, `capacity -
    condition_slots`)."""
    name = step.modality
    passes = [(state, capacity)]
    if step.guided:
      passes.append((self._unconditional(state, step.cfg_conditions),
                     max(1, capacity - condition_slots)))
    logits = []
    for half, slots in passes:
      batch = self._batch(half, name, target_mask)
      decoded = model.decode({name: batch[name]}, model.encode(batch, slots), num_slots)
      logits.append(model.logits(decoded.out, name))
    guided = sampling.guide(*logits, scale) if step.guided else logits[0]
    return guided, decoded.slots.position, decoded.slots.valid

  def _image_impl(self, params, state, key, scale, step: Step, plan, condition_slots=0):
    model = nnx.merge(self.graphdef, params)
    name = step.modality
    n_tok = self.cfg.modality(name).num_tokens
    tokens, known0 = state[name]["tensor"], state[name]["known"]
    b = tokens.shape[0]
    unknown = jnp.sum(~known0, axis=1)
    goals = jnp.asarray(step.done_table(n_tok))[unknown]  # (B, S + 1) known after each step.
    temps = np.asarray(step.temperatures(), np.float32)
    rows = jnp.arange(b)[:, None]
    if step.scheme == "roar":
      key, order_key = jax.random.split(key)
      noise = jax.random.uniform(order_key, (b, n_tok))
      order = jnp.argsort(jnp.where(known0, 2.0, noise), axis=1)
      rank = jnp.zeros((b, n_tok), jnp.int32).at[rows, order].set(jnp.arange(n_tok)[None])

    def body(i, carry, capacity, num_slots):
      tokens, known, filled_at, counts = carry
      if step.scheme == "roar":
        target_mask = ~known0 & (rank >= goals[:, i, None]) & (rank < goals[:, i + 1, None])
      else:
        target_mask = ~known
      current = dict(state, **{name: {"tensor": tokens, "known": known}})
      logits, pos, valid = self._image_logits(model, current, step, scale, target_mask,
                                              capacity, num_slots, condition_slots)
      # One number per grid position: a token's draw does not depend on its slot.
      grid_u = jax.random.uniform(jax.random.fold_in(key, i), (b, n_tok))
      uniform = jnp.take_along_axis(grid_u, jnp.clip(pos, 0, n_tok - 1), axis=1)
      drawn, probs = sampling.sample(logits, uniform, _temperature(temps, i), step.top_k,
                                     step.top_p)
      if step.scheme == "roar":
        commit = valid
      else:  # Keep the most confident, as many as the schedule says.
        todo = goals[:, i + 1] - (unknown - jnp.sum(~known, axis=1))  # Goal - decided.
        conf = jnp.where(valid, probs, -jnp.inf)
        slot_rank = jnp.argsort(jnp.argsort(-conf, axis=1, stable=True), axis=1)
        commit = valid & (slot_rank < todo[:, None])
      where = jnp.where(commit, pos, n_tok)  # Out of range: dropped.
      tokens = tokens.at[rows, where].set(drawn, mode="drop")
      known = known.at[rows, where].set(True, mode="drop")
      filled_at = filled_at.at[rows, where].set(i, mode="drop")
      counts = counts.at[:, i].set(jnp.sum(commit, axis=1, dtype=jnp.int32))
      return tokens, known, filled_at, counts

    carry = (tokens, known0, jnp.full((b, n_tok), -1, jnp.int32),
             jnp.zeros((b, step.num_steps), jnp.int32))
    if len(set(plan)) == 1:  # One shape for every step: one compiled loop body.
      carry = jax.lax.fori_loop(0, step.num_steps,
                                lambda i, c: body(i, c, *plan[0]), carry)
    else:  # Unrolled: each step with its own shapes.
      for i, sizes in enumerate(plan):
        carry = body(i, carry, *sizes)
    tokens, known, filled_at, counts = carry
    return {"tensor": tokens, "known": known}, filled_at, counts

  # ---- sequences: autoregressive with a KV cache

  def _sequence_impl(self, params, state, key, scale, step: Step, capacity: int,
                     use_cache: bool = True, return_logits: bool = False):
    model = nnx.merge(self.graphdef, params)
    name = step.modality
    mod = self.cfg.modality(name)
    length = step.length
    entry = state[name]
    b = entry["tensor"].shape[0]
    num_inputs_sentinels = jnp.sum(entry["known"] & entries.is_sentinel(entry["tensor"]), axis=1)
    stop = entries.sentinel(1) + jnp.maximum(num_inputs_sentinels, 1)  # [S_{m+1}], [S_2] if none.
    temps = np.asarray(step.temperatures(length), np.float32)
    encoded, enc_state = self._encode(model, state, step, capacity)
    bb = encoded.out.shape[0]  # 2B when guided.
    vocab = mod.vocab_size

    if use_cache:
      def next_logits(i, token, cache, out):
        del out
        return model.decode_step(cache, name, jnp.concatenate([token] * (bb // b)), i)
      cache0 = model.init_cache(encoded, length)
    else:
      n_in = mod.num_tokens + 1
      positions = jnp.arange(n_in)[None, :]

      def next_logits(i, token, cache, out):
        del token
        ids = jnp.concatenate([jnp.full((b, 1), entries.sentinel(1), jnp.int32), out], axis=1)
        ids = jnp.pad(ids, ((0, 0), (0, n_in - ids.shape[1])))
        ids = jnp.concatenate([ids] * (bb // b))
        mask = jnp.broadcast_to(positions < i + 2, (bb, n_in))
        batch = self._batch(enc_state, name, mask, ids)
        decoded = model.decode({name: batch[name]}, encoded, length)
        out_i = jnp.take_along_axis(decoded.out, jnp.full((bb, 1, 1), i), axis=1)[:, 0]
        return model.logits(out_i, name), cache
      cache0 = jnp.zeros(())

    def cond(carry):
      i, _, _, _, done, _ = carry
      return (i < length) & ~jnp.all(done)

    def body(carry):
      i, token, cache, out, done, seen = carry
      logits, cache = next_logits(i, token, cache, out)
      if step.guided:
        logits = sampling.guide(logits[:b], logits[b:], scale)
      uniform = jax.random.uniform(jax.random.fold_in(key, i), (b,))
      drawn, _ = sampling.sample(logits, uniform, _temperature(temps, i), step.top_k, step.top_p)
      drawn = jnp.where(done, entries.PAD_ID, drawn)
      out = out.at[:, i].set(drawn)
      if return_logits:
        seen = seen.at[:, i].set(logits)
      return i + 1, drawn, cache, out, done | (drawn == stop), seen

    seen0 = jnp.zeros((b, length, vocab) if return_logits else (), jnp.float32)
    init = (jnp.zeros((), jnp.int32), jnp.full((b,), entries.sentinel(1), jnp.int32), cache0,
            jnp.full((b, length), entries.PAD_ID, jnp.int32), jnp.zeros((b,), bool), seen0)
    _, _, _, out, _, seen = jax.lax.while_loop(cond, body, init)
    return out, seen

  # ---- chains

  def resolve(self, step: Step, state: Mapping[str, Mapping[str, Any]]) -> Step:
    """`step` with its guidance conditions made explicit (and checked)."""
    if step.modality not in self.cfg.decoder_modalities:
      raise ValueError(f"generation: the model cannot generate {step.modality!r}; its targets"
                       f" are {self.cfg.decoder_modalities}.")
    if not step.guided:
      return dataclasses.replace(step, cfg_conditions=())
    conditions = step.cfg_conditions
    if conditions is None:
      conditions = tuple(n for n, e in state.items() if n != step.modality
                         and n in self.cfg.encoder_modalities and np.any(e["known"]))
    missing = [n for n in conditions if n not in state]
    if missing:
      raise ValueError(f"generation: cfg_conditions {missing} of target {step.modality!r} are"
                       f" not in the state {sorted(state)}.")
    return dataclasses.replace(step, cfg_conditions=tuple(conditions))

  def run_step(self, state: State, step: Step, key: Array, *, use_cache: bool = True,
               return_logits: bool = False) -> dict:
    """Decodes `step.modality` from `state`; returns its new entry and extras."""
    step = self.resolve(step, state)
    scale = jnp.float32(step.cfg_scale)
    step = dataclasses.replace(step, cfg_scale=0.0 if step.guided else 1.0)  # The static part.
    name = step.modality
    if name not in state:
      batch_size = entries.check_state(state, self._spec)
      state = dict(state, **{name: entries.empty_entry(self.cfg.modality(name), batch_size)})
    jstate = jax.tree.map(jnp.asarray, dict(state))
    if self.cfg.modality(name).is_sequence:
      out, logits = self._sequence(self.params, jstate, key, scale, step=step,
                                   capacity=self.sequence_capacity(state), use_cache=use_cache,
                                   return_logits=return_logits)
      out = np.asarray(out)
      entry = entries.merge_sequence(self.cfg.modality(name), np.asarray(state[name]["tensor"]),
                                     np.asarray(state[name]["known"]), out)
      extras = {"targets": out}
      if return_logits:
        extras["logits"] = np.asarray(logits)
      return {"entry": entry, **extras}
    entry, filled_at, counts = self._image(self.params, jstate, key, scale, step=step,
                                           plan=self.slot_plan(state, step),
                                           condition_slots=self.condition_slots(state, step))
    return {"entry": jax.tree.map(np.asarray, entry), "filled_at": np.asarray(filled_at),
            "step_counts": np.asarray(counts)}

  def generate(self, state: Mapping[str, Mapping[str, Any]], steps: Sequence[Step], *,
               seed: int | Array = 0, chained: bool = True, use_cache: bool = True,
               return_logits: bool = False) -> Result:
    """Runs the chain `steps` on `state` (see the module docstring).

    `seed` is an int or a jax random key. With `chained=False` every target
    is decoded from the given state only (e.g. rgb -> depth and rgb ->
    semseg, not rgb + depth -> semseg).
    """
    given = {n: dict(e) for n, e in state.items()}
    entries.check_state(given, self._spec)
    key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
    result = Result(state=dict(given))
    for k, step in enumerate(steps):
      source = result.state if chained else given
      if not chained and step.modality in result.state:
        source = dict(given, **{step.modality: result.state[step.modality]})
      t0 = time.perf_counter()
      out = self.run_step(source, step, jax.random.fold_in(key, k), use_cache=use_cache,
                          return_logits=return_logits)
      result.seconds[step.modality] = time.perf_counter() - t0
      result.state[step.modality] = out["entry"]
      for field in ("filled_at", "step_counts", "targets", "logits"):
        if field in out:
          getattr(result, field)[step.modality] = out[field]
    return result
