"""Generation: sampling filters, schedules, MaskGIT / ROAR / cached captions,
guidance, chains, the generate trainer."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import m4  # pylint: disable=unused-import
from m4 import generation
from m4 import modalities
from m4.generation import quality
from m4.generation import sampling
from m4.generation import entries
from m4.generation import sampler as sampler_lib
from m4.generation import schedules
from m4.tokenizers import modality_io
from m4.tokenizers import text as text_lib
from m4.tools import tiny_checkpoint
from m4.workdir import ConfigError

B = 3
# One Step object per scheme, shared by the tests so each compiles once.
MASKGIT = generation.Step("semseg", "maskgit", num_steps=4, temperature=1.0)
ROAR = generation.Step("semseg", "roar", num_steps=5, temperature=1.0)
CAPTION = generation.Step("caption", "autoregressive", temperature=1.0, top_k=20, max_length=24)
CAPTION_SLOTS = modalities.get("caption").num_tokens + 1  # A caption entry's length.


# ---------------------------------------------------------------- sampling


def test_top_k_and_top_p_restrict_the_support():
  # Jitted: one compilation per call signature rather than per operation.
  filter_logits = jax.jit(generation.filter_logits, static_argnames=("top_k", "top_p"))
  sample = jax.jit(generation.sample, static_argnames=("top_k", "top_p"))
  probs = np.array([0.5, 0.3, 0.15, 0.05], np.float32)
  logits = jnp.log(jnp.asarray(probs))[None]
  inf = -np.inf
  np.testing.assert_array_equal(np.isfinite(filter_logits(logits, top_k=2)),
                                [[True, True, False, False]])
  # Mass before each token: 0, .5, .8, .95: top-p 0.6 keeps the first two,
  # 0.5 only the first, 0.81 three.
  for p, kept in ((0.6, 2), (0.5, 1), (0.81, 3), (1.0, 4)):
    out = np.asarray(filter_logits(logits, top_p=p))[0]
    assert np.isfinite(out).sum() == kept and np.all(np.isfinite(out[:kept])), (p, out)
  assert filter_logits(logits, top_k=3, top_p=0.6)[0, 2] == inf
  # Draws stay in the support, with the renormalised frequencies.
  uniform = lambda seed, n: jax.random.uniform(jax.random.key(seed), (n,))
  tokens, conf = sample(jnp.tile(logits, (20000, 1)), uniform(0, 20000), 1.0, top_p=0.6)
  counts = np.bincount(np.asarray(tokens), minlength=4) / 20000
  np.testing.assert_allclose(counts, [0.625, 0.375, 0, 0], atol=0.02)
  np.testing.assert_allclose(np.asarray(conf), np.where(np.asarray(tokens) == 0, 0.625, 0.375),
                             rtol=1e-5)
  # Temperature 0 is the argmax; a low temperature sharpens.
  greedy, _ = sample(jnp.tile(logits, (100, 1)), uniform(1, 100), 0.0)
  assert np.all(np.asarray(greedy) == 0)
  cold, _ = sample(jnp.tile(logits, (5000, 1)), uniform(2, 5000), 0.25)
  assert np.mean(np.asarray(cold) == 0) > 0.85


@pytest.mark.parametrize("v", [300, 360])
def test_sampling_across_blocks_matches_the_softmax(v):
  # 300 entries: three blocks of sampling.BLOCK, the last one padded; 360:
  # three blocks of 120, its divisor nearest BLOCK, none padded. Mass on both
  # sides of block edges, at a tempered and a traced temperature.
  block = sampling.block_size(v)
  assert block == {300: sampling.BLOCK, 360: 120}[v]
  sample = jax.jit(generation.sample)
  logits = np.full(v, -30.0, np.float32)
  logits[[3, block - 1, block, block + 3, v - 1]] = np.log([0.1, 0.2, 0.3, 0.15, 0.25])
  n = 40000
  u = jax.random.uniform(jax.random.key(3), (n,))
  for temperature in (1.0, 0.5):
    want = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
    for draw in (generation.sample, sample):  # Static, then traced temperature.
      tokens, probs = draw(jnp.tile(logits, (n, 1)), u, temperature)
      freq = np.bincount(np.asarray(tokens), minlength=v) / n
      np.testing.assert_allclose(freq, want, atol=0.01)
      np.testing.assert_allclose(np.asarray(probs), want[np.asarray(tokens)], rtol=1e-5)
    same = (generation.sample(jnp.tile(logits, (n, 1)), u, temperature)[0]
            == sample(jnp.tile(logits, (n, 1)), u, temperature)[0])
    assert np.mean(same) > 0.999  # Static and traced: the same draws, up to rounding.
  # Top-k across blocks: the 3 most likely, renormalised.
  tokens, probs = generation.sample(jnp.tile(logits, (n, 1)), u, 1.0, top_k=3)
  kept = np.array([0.2, 0.3, 0.25]) / 0.75
  freq = np.bincount(np.asarray(tokens), minlength=v)[[block - 1, block, v - 1]] / n
  np.testing.assert_allclose(freq, kept, atol=0.01)
  assert set(np.unique(np.asarray(tokens))) == {block - 1, block, v - 1}
  # Greedy: the first of tied maxima, even in a later block; its softmax probability.
  ties = np.zeros((2, v), np.float32)
  ties[0, [block + 2, v - 10]] = 5.0
  ties[1, [7, 2 * block]] = 5.0
  for draw in (generation.sample, sample):
    tokens, probs = draw(jnp.asarray(ties), jnp.full((2,), 0.5), 0.0)
    np.testing.assert_array_equal(tokens, [block + 2, 7])
    np.testing.assert_allclose(probs, jnp.max(jax.nn.softmax(jnp.asarray(ties)), -1), rtol=1e-6)


def test_guide_and_schedules():
  c, u = jnp.array([1.0, 3.0]), jnp.array([2.0, -1.0])
  np.testing.assert_allclose(generation.guide(c, u, 0.0), u)
  np.testing.assert_allclose(generation.guide(c, u, 1.0), c)
  np.testing.assert_allclose(generation.guide(c, u, 3.0), u + 3 * (c - u))
  for step in (MASKGIT, ROAR, generation.Step("rgb", num_steps=7, token_schedule="linear")):
    for n in (0, 1, 5, 40, 64):
      counts = schedules.counts(step, n)
      assert counts.sum() == n and np.all(counts >= 0) and np.all(counts <= step.max_per_step(64))
  # 4M's cosine: few tokens first and last, most in the middle.
  np.testing.assert_array_equal(schedules.counts(generation.Step("rgb", num_steps=4), 64),
                                [9, 23, 23, 9])
  temps = generation.Step("rgb", num_steps=4, temperature=2.0,
                          temperature_schedule="linear").temperatures()
  done = (1 - np.cos(np.pi * np.arange(4) / 4)) / 2  # Known before each step.
  np.testing.assert_allclose(temps, 2.0 * (1 - done), rtol=1e-6)
  with pytest.raises(ConfigError, match=r"config.decoding.caption.scheme: 'caption' is a seq"):
    generation.Step("caption", "maskgit")
  with pytest.raises(ConfigError, match=r"config.decoding.rgb.num_steps: 65 must be in"):
    generation.Step("rgb", num_steps=65)
  with pytest.raises(ConfigError, match=r"config.decoding.depth: missing"):
    generation.steps_from_config(("depth",), {})
  with pytest.raises(ConfigError, match=r"config.decoding.rgb: unknown fields \['steps'\]"):
    generation.steps_from_config(("rgb",), {"rgb": {"steps": 3}})


def test_caption_pairs_and_object_presence():
  scene = {"shape": np.array([[0, 1, -1], [2, 2, 3]]), "color": np.array([[0, 5, -1], [2, 2, 1]])}
  captions = ["a large red sphere left of a small red cube",  # 1 of 2 named pairs right.
              "a yellow cylinder behind a yellow cylinder"]   # 2 of 3 objects, both right.
  sums = quality.caption_pair_sums(captions, scene, np.array([True, True]))
  assert sums == {"matched": 3.0, "shapes_matched": 4.0, "named": 4.0, "objects": 5.0}
  figs = quality.caption_pair_figures(sums)
  assert figs["pair_precision"] == 0.75 and figs["pair_recall"] == 0.6
  assert figs["shape_precision"] == 1.0 and figs["shape_recall"] == 0.8  # The cube's colour aside.
  assert quality.caption_pair_sums(captions, scene, np.array([False, True]))["named"] == 2.0
  # Semantic maps: classes 2 + shape id; a shape counts from 8 pixels.
  maps = np.zeros((2, 16, 16), np.int32)
  maps[0, :4, :4] = 2 + 0  # sphere, 16 px
  maps[0, 8, :5] = 2 + 3  # cone, 5 px: absent
  maps[1, :, :] = 2 + 1  # cube everywhere
  sums = quality.presence_sums(maps, ["a red sphere and a green cone", "a blue cylinder"],
                               np.array([True, True]))
  assert sums == {"tp": 1.0, "fp": 1.0, "fn": 2.0}
  precision, recall = 1 / 2, 1 / 3
  assert quality.presence_figures(sums)["presence_f1"] == pytest.approx(
      2 * precision * recall / (precision + recall))


def test_boxes_count_and_box_texts_tell_followed_from_ignored():
  """Steering figures: a map drawn where the boxes say scores 1, a map of the
  right shapes in the wrong places 0; the rendered scenes' own maps follow
  their boxes and counts far more often than another scene's do."""
  from m4.data import scene_sequences, scenes  # pylint: disable=g-import-not-at-top
  maps = np.zeros((2, 32, 32), np.int32)
  maps[:, 4:12, 2:10] = 2 + 1  # A cube at x 2-10, y 4-12.
  maps[0, 20:30, 16:26] = 2 + 0  # A sphere at x 16-26, y 20-30 (map 0 only).
  maps[0, 0, 0] = 2 + 3  # A 1-pixel cone: below min_pixels, not an object.
  boxes = ["cube 4 8 20 24 sphere 32 40 52 60"] * 2  # 64 bins of 32 px: half-pixels.
  sums = quality.box_sums(maps, boxes, np.array([True, True]))
  assert sums == {"hits": 3.0, "iou": 3.0, "boxes": 4.0}
  assert quality.box_figures(sums) == {"box_hit_rate": 0.75, "box_mean_iou": 0.75}
  meta = ["count 2 pitch 10 height 30 brightness 50 objects 20"] * 2
  assert quality.count_figures(quality.count_sums(maps, meta, np.array([True, True]))) == {
      "count_accuracy": 0.5, "count_mae": 0.5}
  texts = quality.text_match_sums("boxes", ["cube 4 8 20 24 cone 0 0 9 9", "not a box"], boxes,
                                  np.array([True, True]))
  assert texts == {"matched": 1.0, "named": 2.0, "objects": 4.0}
  samples = [scene_sequences.add_texts(scenes.render(i, split="test", resolution=64,
                                                     extras=scene_sequences.EXTRAS))
             for i in range(24)]
  maps = np.stack([s["semseg"] for s in samples])
  valid = np.ones(len(samples), bool)
  own, other = [s["boxes_text"] for s in samples], [s["boxes_text"] for s in samples[1:] + samples[:1]]
  assert quality.box_figures(quality.box_sums(maps, own, valid))["box_hit_rate"] > 0.8
  assert quality.box_figures(quality.box_sums(maps, other, valid))["box_hit_rate"] < 0.2
  counts = [s["metadata_text"] for s in samples]
  assert quality.count_figures(quality.count_sums(maps, counts, valid))["count_accuracy"] > 0.6
  for kind, prefix in (("boxes", "box"), ("instances", "instance")):
    own, other = ([s[f"{kind}_text"] for s in order] for order in (samples, samples[1:] + samples[:1]))
    figures = quality.text_match_figures(kind)
    assert figures(quality.text_match_sums(kind, own, own, valid))[f"{prefix}_f1"] == 1.0
    assert figures(quality.text_match_sums(kind, other, own, valid))[f"{prefix}_f1"] < 0.2
  rgb = np.stack([s["rgb"] for s in samples]) / 255.0
  own = quality.palette_figures(quality.palette_sums(rgb, [s["palette_text"] for s in samples],
                                                     valid))["palette_distance"]
  other = quality.palette_figures(quality.palette_sums(
      rgb, [s["palette_text"] for s in samples[1:] + samples[:1]], valid))["palette_distance"]
  assert own < 12 < 2 * own < other  # 16-level bins: a true colour is within 14 units.


# ---------------------------------------------------------------- the sampler


@pytest.fixture(scope="module")
def gen():
  names = ("rgb", "semseg", "caption")
  return generation.Generator(tiny_checkpoint.tiny_model(seed=0, names=names, inputs=names))


@pytest.fixture(scope="module")
def full_gen():
  """The same model with one slot per token of the state at every step."""
  names = ("rgb", "semseg", "caption")
  return generation.Generator(tiny_checkpoint.tiny_model(seed=0, names=names, inputs=names),
                              compact=False)


@pytest.fixture(scope="module")
def rgb():
  return generation.image_entry("rgb", np.random.default_rng(0).integers(0, 1024, (B, 8, 8)))


def _partial_semseg(seed=1):
  rng = np.random.default_rng(seed)
  known = np.zeros((B, 64), bool)
  known[1, rng.permutation(64)[:20]] = True  # Sample 1: in-painting; 0 and 2: all unknown.
  return generation.image_entry("semseg", rng.integers(0, 512, (B, 64)), known)


def _check_filled_once(result, given, step):
  entry = result.state["semseg"]
  assert entry["known"].all()
  filled, counts = result.filled_at["semseg"], result.step_counts["semseg"]
  for b in range(B):
    unknown = ~given["known"][b]
    np.testing.assert_array_equal(entry["tensor"][b][~unknown], given["tensor"][b][~unknown])
    assert np.all(filled[b][~unknown] == -1)
    assert np.all((filled[b][unknown] >= 0) & (filled[b][unknown] < step.num_steps))
    # Each step decided the scheduled number of tokens, and they add up to
    # the unknown ones: every unknown token was decided exactly once.
    want = schedules.counts(step, int(unknown.sum()))
    np.testing.assert_array_equal(counts[b], want)
    np.testing.assert_array_equal(np.bincount(filled[b][unknown], minlength=step.num_steps), want)


def test_maskgit_fills_each_unknown_token_once_and_keeps_given_ones(gen, rgb):
  given = _partial_semseg()
  state = {"rgb": rgb, "semseg": given}
  result = gen.generate(state, [MASKGIT], seed=0)
  _check_filled_once(result, given, MASKGIT)
  again = gen.generate(state, [MASKGIT], seed=0)
  other = gen.generate(state, [MASKGIT], seed=1)
  np.testing.assert_array_equal(again.state["semseg"]["tensor"], result.state["semseg"]["tensor"])
  np.testing.assert_array_equal(again.filled_at["semseg"], result.filled_at["semseg"])
  assert np.mean(other.state["semseg"]["tensor"] != result.state["semseg"]["tensor"]) > 0.3


def test_roar_decodes_the_scheduled_tokens_in_random_order(gen, rgb):
  given = _partial_semseg()
  result = gen.generate({"rgb": rgb, "semseg": given}, [ROAR], seed=0)
  _check_filled_once(result, given, ROAR)
  # The order is random: the first step's tokens are spread over the grid,
  # and it differs between samples.
  first = result.filled_at["semseg"] == 0
  assert not np.array_equal(first[0], first[2])
  assert np.ptp(np.flatnonzero(first[0])) > 20


def test_slot_plan_gathers_the_visible_and_asked_tokens(gen, full_gen, rgb):
  empty = {"rgb": rgb, "semseg": generation.empty_entry("semseg", B)}
  done = MASKGIT.done_table(64)[64]
  # rgb's 64 tokens and the semseg tokens decided so far in; the rest out.
  assert gen.slot_plan(empty, MASKGIT) == tuple(
      (64 + int(done[i]), 64 - int(done[i])) for i in range(MASKGIT.num_steps))
  assert [d for _, d in gen.slot_plan(empty, ROAR)] == list(np.diff(ROAR.done_table(64)[64]))
  # A target the encoder does not read adds no encoder slot.
  names = ("rgb", "semseg")
  rgb_only = generation.Generator(tiny_checkpoint.tiny_model(seed=0, names=names, inputs=("rgb",)))
  assert {e for e, _ in rgb_only.slot_plan(empty, MASKGIT)} == {64}
  # Samples asking for different numbers of tokens, a compact=False
  # generator and a long schedule: one slot per token, the same every step.
  inpaint = {"rgb": rgb, "semseg": _partial_semseg()}
  assert gen.slot_plan(inpaint, MASKGIT) == ((128, 64),) * MASKGIT.num_steps
  assert full_gen.slot_plan(empty, MASKGIT) == ((128, 64),) * MASKGIT.num_steps
  long = generation.Step("semseg", "roar", num_steps=sampler_lib.MAX_PLANNED_STEPS + 1)
  assert len(set(gen.slot_plan(empty, long))) == 1
  # Guided: the unconditional pass encodes without the conditions' 64 slots
  # (one pass of 2B with the conditional's slots when not compact).
  guided = gen.resolve(generation.Step(**dict(vars(MASKGIT), cfg_scale=2.0)), empty)
  assert guided.cfg_conditions == ("rgb",) and gen.condition_slots(empty, guided) == 64
  assert full_gen.condition_slots(empty, guided) == 0 == gen.condition_slots(empty, MASKGIT)
  # Captions of different lengths keep the whole caption's slots; no caption, none.
  _, captioned = _caption_state(rgb)
  assert gen.sequence_capacity(captioned) == 64 + CAPTION_SLOTS
  assert gen.sequence_capacity({"rgb": rgb}) == 64


@pytest.mark.parametrize("scheme", ["maskgit", "roar", "guided", "inpaint", "caption"])
def test_compact_slots_decide_as_one_slot_per_token(gen, full_gen, rgb, scheme):
  """Gathering each step's tokens into fewer slots changes nothing but speed."""
  step = {"maskgit": MASKGIT, "roar": ROAR, "inpaint": MASKGIT, "caption": CAPTION,
          "guided": generation.Step(**dict(vars(MASKGIT), cfg_scale=2.0))}[scheme]
  state = {"rgb": rgb, "semseg": generation.empty_entry("semseg", B)}
  if scheme == "inpaint":
    state["semseg"] = _partial_semseg()
  if scheme == "caption":
    state = {"rgb": rgb}
  a = gen.generate(state, [step], seed=7, return_logits=True)
  b = full_gen.generate(state, [step], seed=7, return_logits=True)
  np.testing.assert_array_equal(a.state[step.modality]["tensor"], b.state[step.modality]["tensor"])
  if scheme == "caption":
    np.testing.assert_allclose(a.logits["caption"], b.logits["caption"], atol=2e-5)
  else:
    np.testing.assert_array_equal(a.filled_at["semseg"], b.filled_at["semseg"])


def _caption_state(rgb):
  tok = text_lib.load("wordpiece_scenes")
  return tok, {"rgb": rgb, "caption": generation.text_entry(
      "caption", ["", "a red [S_1] left of [S_2]", "a small blue [S_1]"], tok)}


def test_cached_and_uncached_caption_decoding_agree(gen, rgb):
  tok, state = _caption_state(rgb)
  cached = gen.generate(state, [CAPTION], seed=0, return_logits=True)
  uncached = gen.generate(state, [CAPTION], seed=0, return_logits=True, use_cache=False)
  np.testing.assert_array_equal(cached.targets["caption"], uncached.targets["caption"])
  np.testing.assert_allclose(cached.logits["caption"], uncached.logits["caption"], atol=2e-5)
  assert np.abs(cached.logits["caption"]).max() > 0  # Logits were recorded.
  # The spans were merged into the inputs: the given words stay, in order,
  # and no sentinel is left.
  out = cached.state["caption"]
  for b, text in enumerate(["", "a red left of", "a small blue"]):
    ids = out["tensor"][b][out["known"][b]]
    assert not entries.is_sentinel(ids).any()
    given = tok.encode(text)
    pos = [list(ids).index(t) for t in given]
    assert pos == sorted(pos)


def test_guidance_scale_0_is_unconditional_and_1_conditional(gen, rgb):
  empty = generation.empty_entry("semseg", B)
  cond = gen.generate({"rgb": rgb, "semseg": empty}, [MASKGIT], seed=3)
  blind = dict(rgb, known=np.zeros_like(rgb["known"]))  # The same state, rgb dropped.
  uncond = gen.generate({"rgb": blind, "semseg": empty}, [MASKGIT], seed=3)
  assert np.mean(cond.state["semseg"]["tensor"] != uncond.state["semseg"]["tensor"]) > 0.3

  def guided(scale):
    step = generation.Step(**dict(vars(MASKGIT), cfg_scale=scale, cfg_conditions=("rgb",)))
    return gen.generate({"rgb": rgb, "semseg": empty}, [step], seed=3).state["semseg"]["tensor"]

  np.testing.assert_array_equal(guided(0.0), uncond.state["semseg"]["tensor"])
  np.testing.assert_array_equal(guided(1.0), cond.state["semseg"]["tensor"])
  assert np.mean(guided(3.0) != cond.state["semseg"]["tensor"]) > 0.1


def test_chained_generation_feeds_outputs_forward(gen, rgb):
  state = {"rgb": rgb}
  chained = gen.generate(state, [MASKGIT, CAPTION], seed=5, return_logits=True)
  # The caption step saw the generated semseg: redoing it by hand from
  # rgb + that semseg gives the same logits...
  key = jax.random.fold_in(jax.random.key(5), 1)
  by_hand = gen.run_step({"rgb": rgb, "semseg": chained.state["semseg"],
                          }, CAPTION, key, return_logits=True)
  np.testing.assert_allclose(chained.logits["caption"], by_hand["logits"], atol=1e-6)
  # ...while without chaining it sees rgb only.
  parallel = gen.generate(state, [MASKGIT, CAPTION], seed=5, return_logits=True, chained=False)
  np.testing.assert_array_equal(parallel.state["semseg"]["tensor"],
                                chained.state["semseg"]["tensor"])
  first = lambda r: r.logits["caption"][:, 0]
  assert np.abs(first(parallel) - first(chained)).max() > 1e-3


def test_bad_states_are_refused(gen, rgb):
  with pytest.raises(ValueError, match=r"'rgb' tokens must be \(B, 8, 8\) or \(B, 64\)"):
    generation.image_entry("rgb", np.zeros((2, 7, 8), np.int32))
  with pytest.raises(ValueError, match=r"different batch sizes \[2, 3\]"):
    gen.generate({"rgb": rgb, "semseg": generation.empty_entry("semseg", 2)}, [MASKGIT])
  with pytest.raises(ValueError, match=r"sentinels \[2\]; they must be \[S_1\], \[S_2\]"):
    generation.sequence_entry("caption", [[300, entries.sentinel(2)]])
  with pytest.raises(ValueError, match=r"cannot generate 'depth'"):
    gen.generate({"rgb": rgb}, [generation.Step("depth")])


# ---------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny_run")
  paths = tiny_checkpoint.write(str(root / "ckpt"))
  paths["data"] = str(root / "scenes")
  return paths


def _config(name, tiny_run):
  import runpy  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  c = runpy.run_path(os.path.join(REPO, "configs", "generate", f"{name}.py"))["get_config"]()
  c.init = tiny_run["pretrain"]
  for m in ("rgb", "depth", "semseg"):
    c.tokenizers[m] = tiny_run[m]  # By directory (the notebook loads them by name).
  c.data.update(dict(dir=tiny_run["data"], num_train=4, num_validation=2, num_test=6,
                     batch_size=4))
  c.num_samples = 5
  c.grid_rows = 3
  for target in c.targets:
    if target == "caption":
      c.decoding[target].max_length = 6
  return c


def test_generate_trainer_writes_grid_tokens_and_metrics(tiny_run, tmp_path):
  from m4.jobs import generate as trainer  # pylint: disable=g-import-not-at-top
  # Two of the shipped configs, each cut to two targets to compile less.
  for name, targets, labels in (
      ("rgb2all", ("depth", "caption"), ["rgb_pixels->depth", "rgb_pixels->caption"]),
      ("caption2semseg2rgb", ("semseg",), ["caption->semseg", "caption->semseg/presence"])):
    labels = labels + [f"{label}/other_scene" for label in labels]  # Each with its chance level.
    config = _config(name, tiny_run)
    config.targets = targets
    workdir = str(tmp_path / name)
    summary = trainer.run(config, workdir)
    metrics = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
    assert metrics["num_samples"] == 5 and sorted(metrics["generated"]) == sorted(labels)
    assert set(metrics["seconds_per_sample"]) == set(targets)
    samples = [json.loads(line.rstrip(",")) for line in
               open(os.path.join(workdir, "generated.json")).read().splitlines()[1:-1]]
    assert [s["id"] for s in samples] == [0, 1, 2, 3, 4]
    assert all(len(s["tokens"][targets[0]]) == 64 for s in samples)
    assert os.path.getsize(summary["grid"]) > 1000
  rgb2all = json.load(open(os.path.join(tmp_path, "rgb2all", "eval", "metrics.json")))
  assert 0 <= rgb2all["generated"]["rgb_pixels->depth"]["delta1"] <= 1
  assert set(rgb2all["ceiling"]) == {"depth", "caption"}
  assert rgb2all["ceiling"]["caption"]["pair_f1"] == 1.0  # True captions name every object.
  chain = json.load(open(os.path.join(tmp_path, "caption2semseg2rgb", "eval", "metrics.json")))
  assert set(chain["ceiling"]) == {"semseg", "semseg/presence"}
  assert "guidance 2" in chain["decoding"]["semseg"]
  bad = _config("rgb2all", tiny_run)
  bad.inputs = ("depth",)
  bad.targets = ("depth", "caption")
  with pytest.raises(ConfigError, match=r"config.inputs: 'depth' is also a target"):
    trainer.run(bad, str(tmp_path / "bad"))
  bad = _config("rgb2all", tiny_run)
  bad.init = str(tmp_path)
  with pytest.raises(ConfigError, match=r"config.init: .* has no config.json"):
    trainer.run(bad, str(tmp_path / "bad"))


def test_chance_level_scores_against_another_scenes_text():
  from m4.jobs import generate as trainer  # pylint: disable=g-import-not-at-top
  texts = np.array(["a red sphere", "skipped", "a blue cube", "a green cone"])
  other = trainer._other_scenes(texts, np.array([True, False, True, True]))
  assert other.tolist() == ["a blue cube", "skipped", "a green cone", "a red sphere"]
  # Each map draws the shape its caption names (classes 2 + shape id): all
  # right against its own caption, all wrong against the next scene's.
  maps = np.zeros((4, 8, 8), np.int32)
  for b, shape in enumerate((0, 0, 1, 3)):
    maps[b, :4] = 2 + shape
  valid = np.array([True, False, True, True])
  own = quality.presence_figures(quality.presence_sums(maps, texts, valid))
  chance = quality.presence_figures(quality.presence_sums(maps, other, valid))
  assert own["presence_f1"] == 1.0 and chance["presence_f1"] == 0.0
  # Images too: the true maps themselves, scored against the next scene's.
  io = modality_io.SemsegIO("semseg", num_classes=6)
  logits = np.eye(6, dtype=np.float32)[maps]
  own = io.metrics_from_sums(io.metric_sums(logits, maps, valid))
  chance = io.metrics_from_sums(io.metric_sums(logits, trainer._other_scenes(maps, valid), valid))
  assert own["miou"] == 1.0 and chance["miou"] == 0.25  # Only the empty half (class 0) agrees.


def test_notebook_executes(tiny_run, monkeypatch):
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  path = os.path.join(REPO, "colabs", "explore_checkpoint.ipynb")
  nb = nbformat.read(path, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "stored with outputs"
  monkeypatch.setenv("M4_CHECKPOINT", tiny_run["pretrain"])
  monkeypatch.setenv("M4_TOKENIZERS", tiny_run["tokenizers"])
  monkeypatch.setenv("M4_NUM_SAMPLES", "2")
  monkeypatch.setenv("PYTHONPATH", REPO)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": os.path.dirname(path)}}).execute()
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) >= 5  # The batch, reconstructions, generations, the chain, in-painting.
