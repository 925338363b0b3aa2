"""4M's masking: Dirichlet budgets, disjoint image masks, exact span masking."""

import dataclasses
import string

import grain
import ml_collections
import numpy as np
import pytest
from absl import flags

from m4 import modalities as M
from m4.data import masking
from m4.tokenizers import text
from tests.test_text_tokenizer import synthetic_captions

IMAGES = ("rgb", "depth", "semseg")
NAMES = IMAGES + ("caption",)


@pytest.fixture(scope="module")
def tok():
  return text.train(synthetic_captions(300, seed=0), vocab_size=512,
                    initial_alphabet=string.ascii_lowercase + string.punctuation)


def make_sample(rng, caption, absent=()):
  sample = {n: rng.integers(0, M.get(n).vocab_size, M.get(n).grid).astype(np.int32)
            for n in IMAGES}
  sample["caption"] = caption
  sample["id"] = np.int64(0)
  for n in absent:
    del sample[n]
  return sample


def config(mixture, n_in, n_tgt, modalities=NAMES, min_in=None, min_tgt=None):
  return ml_collections.ConfigDict(dict(
      modalities=modalities, num_input_tokens=n_in, num_target_tokens=n_tgt,
      min_input_tokens=n_in if min_in is None else min_in,
      min_target_tokens=n_tgt if min_tgt is None else min_tgt,
      keep_prob_decay=0.9, mixture=mixture))


def component(weight, inputs, targets, modalities=NAMES):
  return dict(weight=weight, input_alphas={n: inputs.get(n, 0.0) for n in modalities},
              target_alphas={n: targets.get(n, 0.0) for n in modalities},
              keep={"caption": "random"} if "caption" in modalities else {})


def test_budget_means_match_the_dirichlet_mixture(tok):
  # Totals small enough that no clip binds, so the budgets are the mixture's
  # draws. Alphas are symmetric inside each component, so its mean share is
  # exactly 1/k per active modality, flooring and remainder draws included.
  mixture = {
      "rgb2all": component(1.0, {"rgb": 1000.0}, {"depth": .5, "semseg": .5, "caption": .5}),
      "all2all": component(3.0, dict.fromkeys(NAMES, .5), dict.fromkeys(NAMES, .5))}
  masker = masking.Masking(config(mixture, 16, 16), text_tokenizers={"caption": tok})
  rng = np.random.default_rng(0)
  present = np.ones(4, bool)
  draws = [masker.sample_budgets(rng, present) for _ in range(20000)]
  rgb2all = np.array([masker.component_names[d[0]] == "rgb2all" for d in draws])
  b_in = np.stack([d[1] for d in draws])
  b_tgt = np.stack([d[2] for d in draws])
  assert (b_in.sum(1) == 16).all() and (b_tgt.sum(1) == 16).all()
  # P(rgb2all) = 1/4; expected budgets: rgb 16/4 + 3/4 * 4 = 7 inputs, ...
  want_in = np.array([7.0, 3.0, 3.0, 3.0])
  want_tgt = np.array([3.0, 13 / 3, 13 / 3, 13 / 3])
  # Five standard errors of the mean: fails by chance with p < 1e-5 each.
  s = np.sqrt(len(draws))
  assert abs(rgb2all.mean() - 0.25) < 5 * np.sqrt(0.25 * 0.75) / s
  np.testing.assert_array_less(np.abs(b_in.mean(0) - want_in), 5 * b_in.std(0) / s)
  np.testing.assert_array_less(np.abs(b_tgt.mean(0) - want_tgt), 5 * b_tgt.std(0) / s)
  # And rgb2all gives every input to rgb and no target to it.
  assert (b_in[rgb2all, 0] == 16).all() and (b_tgt[rgb2all, 0] == 0).all()


def test_dirichlet_budget_mean_with_unequal_alphas():
  rng = np.random.default_rng(1)
  alphas = np.array([2.0, 1.0, 0.5, 0.5, 0.0])
  total, n = 1000, 4000
  draws = np.stack([masking.dirichlet_budget(rng, alphas, total) for _ in range(n)])
  assert (draws.sum(1) == total).all() and (draws[:, 4] == 0).all()
  # Flooring loses < 1 token and the remainder draws add < len(alphas), so
  # the mean share is alpha / sum(alpha) within 5 standard errors + 4/total.
  err = np.abs(draws.mean(0) / total - alphas / alphas.sum())
  np.testing.assert_array_less(err, 5 * draws.std(0) / total / np.sqrt(n) + 4 / total + 1e-12)


def _check_entry(name, entry, tok, present):
  inp, tgt, dam, tensor = (entry["input_mask"], entry["target_mask"],
                           entry["decoder_attention_mask"], entry["tensor"])
  assert inp.dtype == bool and tgt.dtype == bool and dam.dtype == np.int32
  assert tensor.dtype == np.int32
  if not present:
    assert not inp.any() and not tgt.any() and not dam.any()
    return 0, 0
  if name == "caption":
    assert tensor.shape == (2 * (M.get("caption").num_tokens + 1),)
    n_in, n_tgt = int(inp.sum()), int(tgt.sum())
    assert inp[:n_in].all()  # The input is a prefix.
    if n_tgt:
      (where,) = np.nonzero(tgt)
      assert where[-1] - where[0] + 1 == n_tgt and where[0] >= n_in  # After the input.
      assert tok.is_sentinel(tensor[where[0]])  # Starts at a sentinel.
    assert (tensor[inp | tgt] != tok.pad_id).all()  # Padding is never selected.
    assert (tensor[~(inp | tgt)] == tok.pad_id).all()
    assert (dam == tgt).all()
  else:
    assert tensor.shape == (M.get(name).num_tokens,)
    assert not (inp & tgt).any()  # Disjoint.
    n_tgt = int(tgt.sum())
    if n_tgt:
      first = np.argmax(tgt)
      assert dam[first] == n_tgt and dam.sum() == n_tgt
    else:
      assert not dam.any()
  return int(inp.sum()), int(tgt.sum())


def test_masks_respect_budgets_capacities_and_roles(tok, monkeypatch):
  # semseg may only be a target here; totals larger than the grids make clips bind.
  semseg = M.get("semseg")
  monkeypatch.setitem(M._REGISTRY, "semseg", dataclasses.replace(semseg, roles=(M.TARGET,)))
  cfg = masking.preset("4m7", num_input_tokens=150, num_target_tokens=150)
  cfg.min_input_tokens, cfg.min_target_tokens = 1, 0
  assert cfg.mixture.all2all.input_alphas.semseg == 0.0
  masker = masking.Masking(cfg, text_tokenizers={"caption": tok})
  rng = np.random.default_rng(2)
  captions = synthetic_captions(300, seed=3)
  for i, caption in enumerate(captions):
    absent = [n for n in NAMES if rng.random() < 0.3]
    sample = make_sample(rng, caption, absent=absent)
    present = masker.present(sample)
    if not present[[0, 1, 3]].any():  # Nothing that can be an input.
      with pytest.raises(ValueError, match="no component"):
        masker.mask_with_seed(sample, seed=0, index=i)
      continue
    c, b_in, b_tgt = masker.sample_budgets(np.random.default_rng(i), present)
    caps = np.array([M.get(n).num_tokens for n in NAMES]) * present
    assert (b_in <= caps).all() and (b_tgt <= caps).all()
    assert (b_in[:3] + b_tgt[:3] <= caps[:3]).all()
    assert b_in.sum() <= 150 and b_tgt.sum() <= 150 and b_in[2] == 0
    out = masker.mask_with_seed(sample, seed=0, index=i)
    assert set(out) == set(NAMES) | {"id"} and out["id"] == sample["id"]
    counts = np.array([_check_entry(n, out[n], tok, n not in absent) for n in NAMES])
    assert counts[:, 0].sum() <= 150 and counts[:, 1].sum() <= 150
    assert counts[2, 0] == 0  # semseg is never an input.
    for j, n in enumerate(IMAGES):
      if n not in absent:
        np.testing.assert_array_equal(out[n]["tensor"], sample[n].reshape(-1))


def test_alpha_on_a_disallowed_role_is_an_error(tok, monkeypatch):
  semseg = M.get("semseg")
  monkeypatch.setitem(M._REGISTRY, "semseg", dataclasses.replace(semseg, roles=(M.TARGET,)))
  cfg = config({"a": component(1.0, dict.fromkeys(NAMES, .5), dict.fromkeys(NAMES, .5))}, 8, 8)
  with pytest.raises(ValueError, match=r"config.masking.mixture.a.input_alphas.semseg"):
    masking.Masking(cfg, text_tokenizers={"caption": tok})


def test_caption_spans_reconstruct_the_caption_exactly(tok):
  # Caption only, all budget to it; input budgets 0..48 exercise the keep-prob
  # decay, and a target budget of 48 never cuts a (<= 22 + 2 token) target.
  mods = ("caption",)
  cfg = config({"c": component(1.0, {"caption": 1.0}, {"caption": 1.0}, mods)}, 48, 48, mods,
               min_in=0)
  masker = masking.Masking(cfg, text_tokenizers={"caption": tok})
  sentinel_ids = np.arange(200) + 4
  n_inputs = []
  for i, caption in enumerate(synthetic_captions(300, seed=4)):
    out = masker.mask_with_seed({"caption": caption}, seed=1, index=i)["caption"]
    _check_entry("caption", out, tok, True)
    inp = out["tensor"][out["input_mask"]]
    tgt = out["tensor"][out["target_mask"]]
    ids = tok.encode(caption) + [tok.eos_id]
    # Sentinels are [S_1], [S_2], ... in order, as in 4M; the target ends
    # with the one after the last span.
    n_inputs.append(len(inp))
    if not len(inp):  # Input budget 0: the whole caption is one span, as 4M.
      inp = sentinel_ids[1:2]
    in_sent = inp[tok.is_sentinel(inp)]
    tgt_sent = tgt[tok.is_sentinel(tgt)]
    np.testing.assert_array_equal(in_sent, sentinel_ids[1:len(in_sent) + 1])
    np.testing.assert_array_equal(tgt_sent, sentinel_ids[1:len(in_sent) + 2])
    assert tgt[0] == sentinel_ids[1] and tgt[-1] == sentinel_ids[len(in_sent) + 1]
    np.testing.assert_array_equal(masking.merge_spans(inp, tgt, tok.is_sentinel), ids)
    assert tok.decode(masking.merge_spans(inp, tgt, tok.is_sentinel)) == caption
  # Both extremes happen: everything masked, and spans mixed with kept tokens.
  assert 0 in n_inputs and max(n_inputs) > 5


def test_span_mask_and_cut_target():
  rng = np.random.default_rng(5)
  sentinel_ids = np.arange(200) + 4
  ids = np.arange(300, 320)
  for _ in range(200):
    keep = rng.random(20) < rng.random()
    inp, tgt = masking.span_mask(ids, keep, sentinel_ids)
    is_sent = lambda x: (x >= 4) & (x < 204)
    np.testing.assert_array_equal(masking.merge_spans(inp, tgt, is_sent), ids)
    assert len(inp) == keep.sum() + is_sent(inp).sum()
    assert len(tgt) == (~keep).sum() + is_sent(tgt).sum()
    for budget in range(0, len(tgt)):
      cut = masking.cut_target(rng, tgt, is_sent(tgt), budget)
      assert len(cut) <= budget
      if budget:
        # A contiguous piece of the target that starts at a sentinel.
        starts = [s for s in np.nonzero(is_sent(tgt))[0]
                  if np.array_equal(tgt[s:s + len(cut)], cut)]
        assert starts and is_sent(cut[:1]).all()


def test_pretokenized_and_raw_captions_agree(tok):
  masker = masking.Masking(masking.preset("4m7", num_input_tokens=32, num_target_tokens=32),
                           text_tokenizers={"caption": tok})
  rng = np.random.default_rng(6)
  for i, caption in enumerate(synthetic_captions(20, seed=7)):
    raw = make_sample(rng, caption)
    pre = dict(raw, caption=tok.encode_padded(caption, M.get("caption").num_tokens))
    a, b = masker.mask_with_seed(raw, 3, i), masker.mask_with_seed(pre, 3, i)
    for n in NAMES:
      for k in a[n]:  # Same entries from a str caption and from its ids.
        np.testing.assert_array_equal(a[n][k], b[n][k])


def _equal(a, b):
  return all(np.array_equal(a[n][k], b[n][k]) for n in NAMES for k in a[n])


def test_deterministic_per_seed_and_index_and_worker_count(tok):
  masker = masking.Masking(masking.preset("4m7", num_input_tokens=32, num_target_tokens=32),
                           text_tokenizers={"caption": tok})
  rng = np.random.default_rng(8)
  samples = [make_sample(rng, c) for c in synthetic_captions(12, seed=9)]
  first = masker.mask_with_seed(samples[0], 0, 5)
  assert _equal(first, masker.mask_with_seed(samples[0], 0, 5))
  assert not _equal(first, masker.mask_with_seed(samples[0], 0, 6))  # Another index.
  assert not _equal(first, masker.mask_with_seed(samples[0], 1, 5))  # Another seed.

  def run(workers):
    ds = grain.MapDataset.source(samples).random_map(masker, seed=3).to_iter_dataset()
    if workers:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return list(ds)

  if not flags.FLAGS.is_parsed():  # grain's workers read absl flags.
    flags.FLAGS.mark_as_parsed()
  in_process, two_workers = run(0), run(2)
  assert len(in_process) == len(two_workers) == len(samples)
  assert all(_equal(a, b) for a, b in zip(in_process, two_workers))
  assert not _equal(in_process[0], in_process[1])


def test_preset_4m7(tok):
  cfg = masking.preset("4m7", num_input_tokens=64, num_target_tokens=64)
  assert set(cfg.mixture) == {"rgb2all", "all2all"}
  assert dict(cfg.mixture.rgb2all.input_alphas) == {"rgb": 1000.0, "depth": 0.0, "semseg": 0.0,
                                                     "caption": 0.0}
  assert dict(cfg.mixture.all2all.target_alphas) == dict.fromkeys(NAMES, 0.5)
  masker = masking.Masking(cfg, text_tokenizers={"caption": tok})
  rng = np.random.default_rng(10)
  comps = []
  for i in range(200):
    c, b_in, b_tgt = masker.sample_budgets(rng, np.ones(4, bool))
    comps.append(c)
    if masker.component_names[c] == "rgb2all":
      assert b_in.tolist() == [64, 0, 0, 0] and b_tgt[0] == 0
  assert 50 < sum(comps) < 150  # About half and half.


def test_pixels_are_a_budget_of_input_patches_never_targets(tok):
  names = ("rgb_pixels",) + NAMES
  cfg = masking.preset("4m7", num_input_tokens=64, num_target_tokens=64, modalities=names,
                       rgb="rgb_pixels")
  # 4M-7: pixels are RGB's input in "RGB to all"; the RGB tokens are a target there.
  assert cfg.mixture.rgb2all.input_alphas.rgb_pixels == 1000.0
  assert cfg.mixture.rgb2all.target_alphas.rgb == 0.5
  assert cfg.mixture.all2all.target_alphas.rgb_pixels == 0.0
  masker = masking.Masking(cfg, text_tokenizers={"caption": tok})
  rng = np.random.default_rng(12)
  image = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
  seen_rgb2all = False
  for i in range(40):
    sample = dict(make_sample(rng, "a red cube left of a blue sphere"), rgb_pixels=image)
    out = masker.mask_with_seed(sample, seed=0, index=i)
    px = out["rgb_pixels"]
    np.testing.assert_allclose(px["tensor"], image / 255.0 * 2 - 1, atol=1e-6)
    assert px["input_mask"].shape == (64,) and not px["target_mask"].any()
    n_in = sum(int(np.sum(out[n]["input_mask"])) for n in names)
    assert n_in <= 64  # Pixel patches count in the input budget like any token.
    if px["input_mask"].all():
      seen_rgb2all = True
      assert out["rgb"]["target_mask"].any() or out["depth"]["target_mask"].any()
  assert seen_rgb2all


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.mixture.all2all.input_alphas.__delattr__("depth"), "all2all.input_alphas"),
    (lambda c: setattr(c.mixture.all2all.target_alphas, "rgb", -1.0), "target_alphas.rgb"),
    (lambda c: setattr(c.mixture.all2all.keep, "caption", "most"), "keep.caption"),
    (lambda c: setattr(c, "min_input_tokens", 99), "min_input_tokens"),
    (lambda c: setattr(c, "keep_prob_decay", 1.0), "keep_prob_decay"),
    (lambda c: setattr(c, "modalities", ("rgb", "thermal")), "modalities"),
    (lambda c: setattr(c.mixture.all2all, "weight", 0.0), "weights sum to 0"),
])
def test_config_errors_name_the_field(tok, edit, match):
  cfg = masking.preset("all2all", num_input_tokens=32, num_target_tokens=32)
  edit(cfg)
  with pytest.raises(ValueError, match=match):
    masking.Masking(cfg, text_tokenizers={"caption": tok})


def test_bad_samples_are_named(tok):
  masker = masking.Masking(masking.preset("all2all", num_input_tokens=32, num_target_tokens=32),
                           text_tokenizers={"caption": tok})
  rng = np.random.default_rng(11)
  sample = make_sample(rng, "a red cube")
  with pytest.raises(ValueError, match=r"sample\['rgb'\].*tokenize"):
    masker.mask_with_seed(dict(sample, rgb=np.zeros((64, 64, 3), np.float32)), 0, 0)
  with pytest.raises(ValueError, match=r"sample\['caption'\]"):
    masker.mask_with_seed(dict(sample, caption=np.zeros((3,), np.int32)), 0, 0)


def test_tokenizer_larger_than_the_registry_is_refused(tok, monkeypatch):
  caption = M.get("caption")
  monkeypatch.setitem(M._REGISTRY, "caption", dataclasses.replace(caption, vocab_size=300))
  with pytest.raises(ValueError, match="vocab_size 300"):
    masking.Masking(masking.preset("all2all", num_input_tokens=8, num_target_tokens=8),
                    text_tokenizers={"caption": tok})


def test_rendered_scenes_with_the_committed_tokenizer(tmp_path):
  """The default masker (tokenizer by registry name) on real scene captions."""
  from m4.data import scenes  # pylint: disable=g-import-not-at-top
  from m4.tools import mask_grid  # pylint: disable=g-import-not-at-top
  raws = [scenes.render(i, split="validation", resolution=32) for i in range(6)]
  masker = masking.Masking(masking.preset("4m7", num_input_tokens=64, num_target_tokens=64))
  tok = masker.text_tokenizers["caption"]
  assert tok.path.endswith("wordpiece_scenes.json")
  rng = np.random.default_rng(12)
  for i, raw in enumerate(raws):
    sample = dict(make_sample(rng, raw["caption"]), id=raw["id"])
    out = masker.mask_with_seed(sample, seed=0, index=i)
    counts = np.array([_check_entry(n, out[n], tok, True) for n in NAMES])
    assert counts[:, 0].sum() <= 64 and counts[:, 1].sum() <= 64
  path = mask_grid.save_mask_grid(str(tmp_path / "masks.png"), masker, raws)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  width, height = Image.open(path).size
  assert width > 6 * 128 and height > 6 * 128  # 6 columns, 6 rows of >= 128 px cells.


def test_in_the_grain_pipeline(tmp_path):
  """m4.data.pipeline batches masked samples: static (B, N) arrays per field."""
  from m4.data import pipeline  # pylint: disable=g-import-not-at-top
  data = pipeline.data_config(kind="scenes", dir=str(tmp_path / "data"), resolution=16,
                              num_train=24, num_validation=10, num_test=1, workers=1,
                              modalities=("rgb", "caption"), batch_size=8)
  mods = ("caption",)
  masker = masking.Masking(config(
      {"c": component(1.0, {"caption": 1.0}, {"caption": 1.0}, mods)}, 16, 16, mods, min_in=0))
  batch = next(iter(pipeline.make_dataset(data, "train", seed=0, training=True,
                                          transforms=[masker])))
  n = 2 * (M.get("caption").num_tokens + 1)
  assert {k: v.shape for k, v in batch["caption"].items()} == dict.fromkeys(
      ("tensor", "input_mask", "target_mask", "decoder_attention_mask"), (8, n))
  assert batch["id"].shape == (8,) and batch["rgb"].shape[0] == 8  # Passed through.
  assert (batch["caption"]["input_mask"].sum(1) <= 16).all()
  assert (batch["caption"]["target_mask"].sum(1) <= 16).all()
  evals = list(pipeline.make_dataset(data, "validation", seed=0, training=False,
                                     transforms=[masker]))
  assert len(evals) == 2 and evals[-1]["valid"].sum() == 2  # Padding flags survive masking.
