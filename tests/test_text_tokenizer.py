"""The WordPiece text tokenizer: 4M's id layout, normalisation, round trips."""

import json
import string

import numpy as np
import pytest

from m4 import modalities
from m4.tokenizers import text

SHAPES = ("sphere", "cube", "cylinder", "cone")
COLORS = ("red", "green", "blue", "yellow", "purple", "gray")
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "in front of", "behind")


def synthetic_captions(n, seed):
  """Scene-like captions ("a large red sphere left of a small blue cube, ...")."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    objs = [f"a {rng.choice(SIZES)} {rng.choice(COLORS)} {rng.choice(SHAPES)}"
            for _ in range(rng.integers(1, 5))]
    parts = [objs[0]] + [f"{rng.choice(RELATIONS)} {o}" for o in objs[1:]]
    out.append(" ".join(parts) + ("." if rng.random() < 0.5 else ""))
  return out


@pytest.fixture(scope="module")
def tok():
  return text.train(synthetic_captions(300, seed=0), vocab_size=512,
                    initial_alphabet=string.ascii_lowercase + string.digits + string.punctuation)


def test_layout(tok):
  vocab = tok.tokenizer.get_vocab()
  assert [vocab[t] for t in ("[PAD]", "[UNK]", "[SOS]", "[EOS]")] == [0, 1, 2, 3]
  assert (tok.pad_id, tok.unk_id, tok.sos_id, tok.eos_id) == (0, 1, 2, 3)
  assert tok.num_sentinels == 200
  assert [tok.sentinel_id(i) for i in (0, 1, 199)] == [4, 5, 203]
  assert all(vocab[f"[S_{i}]"] == 4 + i for i in range(200))
  assert tok.is_sentinel([3, 4, 203, 204]).tolist() == [False, True, True, False]
  with pytest.raises(IndexError):
    tok.sentinel_id(200)
  assert 204 < tok.vocab_size <= modalities.get("caption").vocab_size


def test_scene_captions_round_trip_exactly(tok):
  captions = synthetic_captions(200, seed=1)  # Not the training captions.
  ids = tok.encode_batch(captions)
  assert [tok.decode(i) for i in ids] == captions
  assert all(min(i) >= 204 for i in ids)  # Whole words, no [UNK], no specials.


@pytest.mark.parametrize("raw, normal", [
    ("  A Red  CUBE,left of the Sphère! ", "a red cube, left of the sphere!"),
    ("it's a-b (c) x", "it ' s a - b ( c ) x"),
    ("tab\there\nnew\u00a0line", "tab here new line"),
    ("x\u0000y\u200bz", "xyz"),
    ("hello . , world ?!", "hello., world?!"),
    ("$5+3=8 ~ok~ `a` ^b^ |c|", "$ 5 + 3 = 8 ~ ok ~ ` a ` ^ b ^ | c |"),
    ("Ünïcödé façade", "unicode facade"),
    ("", ""),
])
def test_normalisation_is_as_documented(tok, raw, normal):
  assert text.normalize_text(raw) == normal
  assert tok.normalize(raw) == normal
  assert tok.decode(tok.encode(raw)) == normal
  assert tok.encode(tok.decode(tok.encode(raw))) == tok.encode(raw)


def test_out_of_vocabulary_is_unk(tok):
  ids = tok.encode("a red \u4e2d cube")
  assert tok.unk_id in ids
  assert tok.decode(ids) == "a red [UNK] cube"


def test_encode_padded_and_decode_drop_specials(tok):
  ids = tok.encode("a red cube")
  padded = tok.encode_padded("a red cube", 8)
  assert padded.dtype == np.int32 and padded.shape == (8,)
  assert padded.tolist() == ids + [tok.eos_id] + [tok.pad_id] * (8 - len(ids) - 1)
  assert tok.decode(padded) == "a red cube"
  # As 4M: [EOS] is appended before cutting, so a long text loses it.
  cut = tok.encode_padded("a large red sphere left of a small blue cube", 4)
  assert tok.eos_id not in cut and tok.pad_id not in cut
  with_sentinel = [tok.sentinel_id(1)] + ids + [tok.sos_id]
  assert tok.decode(with_sentinel) == "a red cube"
  assert tok.decode(with_sentinel, keep_sentinels=True) == "[S_1] a red cube"


def test_save_load_by_path_and_name(tok, tmp_path, monkeypatch):
  path = tok.save(str(tmp_path / "mine.json"))
  again = text.load(path)
  assert again.encode("a small blue cone") == tok.encode("a small blue cone")
  monkeypatch.setattr(text, "ASSETS_DIR", str(tmp_path))
  assert text.load("mine").vocab_size == tok.vocab_size
  with pytest.raises(FileNotFoundError, match="nosuch.*mine"):
    text.load("nosuch")


def _4m_format_json(pieces, classes):
  """A tokenizer file in the exact layout of 4M's released WordPiece JSON.

  Same top-level keys and settings as `text_tokenizer_4m_wordpiece_30k.json`:
  [PAD] [UNK] [SOS] [EOS] (single_word false), [S_0]..[S_199] (single_word
  true), coordinate tokens "v0=0".. and COCO class names (normalized true), all
  marked special, then word pieces; BERT normaliser and pre-tokeniser, a
  WordPiece decoder with cleanup, no post-processor.
  """
  added = []

  def add(content, single_word, normalized):
    added.append({"id": len(added), "content": content, "single_word": single_word,
                  "lstrip": False, "rstrip": False, "normalized": normalized, "special": True})

  for t in ("[PAD]", "[UNK]", "[SOS]", "[EOS]"):
    add(t, False, False)
  for i in range(200):
    add(f"[S_{i}]", True, False)
  for v in ("v0", "v1", "v2", "v3"):
    for i in range(3):
      add(f"{v}={i}", True, False)
  for c in classes:
    add(c, True, True)
  vocab = {t["content"]: t["id"] for t in added}
  for p in pieces:
    vocab[p] = len(vocab)
  return {
      "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
      "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                     "strip_accents": None, "lowercase": True},
      "pre_tokenizer": {"type": "BertPreTokenizer"},
      "post_processor": None,
      "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
      "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100, "vocab": vocab},
  }


def test_4m_format_file_loads_with_4m_sentinel_ids(tmp_path):
  pieces = [".", ",", "a", "the", "red", "on", "table", "##s", "dog", "sit", "##ting"]
  path = tmp_path / "text_tokenizer_4m_wordpiece_tiny.json"
  path.write_text(json.dumps(_4m_format_json(pieces, classes=["apple", "dining table"])))
  tok = text.load(str(path))
  assert tok.num_sentinels == 200 and tok.vocab_size == 4 + 200 + 12 + 2 + len(pieces)
  assert tok.sentinel_id(0) == 4 and tok.sentinel_id(1) == 5 and tok.sentinel_id(199) == 203
  assert tok.eos_id == 3 and tok.pad_id == 0
  vocab = tok.tokenizer.get_vocab()
  ids = tok.encode("A dog sitting on the table [S_1] v0=2 apple.")
  assert ids == [vocab[t] for t in ("a", "dog", "sit", "##ting", "on", "the", "table")] + [
      5, vocab["v0=2"], vocab["apple"], vocab["."]]
  # Class tokens are 'special' in 4M's file; decode keeps them, drops sentinels.
  assert tok.decode(ids) == "a dog sitting on the table v0=2 apple."


def test_bad_layout_names_the_file(tmp_path):
  spec = _4m_format_json(["a"], classes=[])
  spec["added_tokens"][2]["content"], spec["added_tokens"][3]["content"] = "[EOS]", "[SOS]"
  spec["model"]["vocab"]["[SOS]"], spec["model"]["vocab"]["[EOS]"] = 3, 2
  path = tmp_path / "swapped.json"
  path.write_text(json.dumps(spec))
  with pytest.raises(ValueError, match=r"swapped\.json.*\[SOS\] has id 3"):
    text.load(str(path))
  (tmp_path / "junk.json").write_text("{not json")
  with pytest.raises(ValueError, match="junk.json"):
    text.load(str(tmp_path / "junk.json"))


def test_committed_scenes_tokenizer_round_trips_rendered_captions():
  from m4.data import scenes  # pylint: disable=g-import-not-at-top
  tok = text.load(modalities.get("caption").tokenizer)
  assert tok.path.endswith("tokenizers/wordpiece_scenes.json")
  assert tok.num_sentinels == 200 and tok.vocab_size <= modalities.get("caption").vocab_size
  captions = [scenes.render(i, split=split, resolution=16, max_objects=4)["caption"]
              for split in ("validation", "test") for i in range(12)]
  for caption in captions:
    ids = tok.encode(caption)
    assert tok.unk_id not in ids and len(ids) + 1 <= modalities.get("caption").num_tokens
    assert tok.decode(ids) == caption


def test_committed_shared_tokenizer_round_trips_every_scene_text():
  """tokenizers/wordpiece_scenes21.json, which boxes, palette, metadata and
  instances name: held-out texts of each kind (and captions) round-trip and fit."""
  from m4.data import scene_sequences, scenes  # pylint: disable=g-import-not-at-top
  names = ("caption",) + scene_sequences.KINDS
  tok = text.load(modalities.get("boxes").tokenizer)
  assert tok.path.endswith("tokenizers/wordpiece_scenes21.json")
  for split in ("validation", "test"):
    for i in range(12):
      sample = scene_sequences.add_texts(scenes.render(
          i, split=split, resolution=64, max_objects=4, extras=scene_sequences.EXTRAS))
      for name in names:
        mod = modalities.get(name)
        assert mod.tokenizer == ("wordpiece_scenes" if name == "caption" else "wordpiece_scenes21")
        ids = tok.encode(sample[mod.data_key])
        assert tok.unk_id not in ids and len(ids) + 1 <= mod.num_tokens, (name, sample[mod.data_key])
        assert tok.decode(ids) == sample[mod.data_key]


def test_trainer_on_a_scenes_dataset(tmp_path, repo_root):
  import os  # pylint: disable=g-import-not-at-top
  import runpy  # pylint: disable=g-import-not-at-top
  from m4.jobs import text_tokenizer  # pylint: disable=g-import-not-at-top
  config = runpy.run_path(os.path.join(repo_root, "configs/tokenizers/caption_scenes.py"))[
      "get_config"]()
  config.data.update(dict(dir=str(tmp_path / "data"), resolution=16, num_train=48,
                          num_validation=16, num_test=1, workers=1))
  summary = text_tokenizer.run(config, str(tmp_path / "work"))
  assert summary["round_trip_exact"] == 1.0 and summary["unk_fraction"] == 0.0
  assert summary["train_captions"] == 48 and summary["eval_captions"] == 16
  assert summary["fit_num_tokens"] == 1.0 and summary["vocab_size"] <= 512
  assert os.path.getsize(summary["caption_lengths_png"]) > 1000
  tok = text.load(summary["tokenizer"])
  assert tok.sentinel_id(1) == 5 and tok.vocab_size == summary["vocab_size"]
  # Same captions, same file (pruning makes the library's training reproducible).
  again = text_tokenizer.run(config, str(tmp_path / "again"))
  with open(summary["tokenizer"]) as a, open(again["tokenizer"]) as b:
    assert a.read() == b.read()
  config.tokenizer.vocab_size = 1000
  with pytest.raises(ValueError, match="tokenizer.vocab_size"):
    text_tokenizer.run(config, str(tmp_path / "bad"))


def test_shared_vocabulary_for_caption_and_scene_texts(tmp_path, repo_root):
  """4M-21's text modalities (caption, boxes, palette, metadata, instances) in
  one vocabulary: every text of every modality round-trips without [UNK] and
  fits its registry entry's num_tokens."""
  import os  # pylint: disable=g-import-not-at-top
  import runpy  # pylint: disable=g-import-not-at-top
  from m4.jobs import text_tokenizer  # pylint: disable=g-import-not-at-top
  config = runpy.run_path(os.path.join(repo_root, "configs/tokenizers/caption_scenes.py"))[
      "get_config"]("shared")
  config.data.update(dict(dir=str(tmp_path / "data"), resolution=32, num_train=48,
                          num_validation=16, num_test=1, workers=1))
  summary = text_tokenizer.run(config, str(tmp_path / "work"))
  for prefix in ("", "boxes/", "palette/", "metadata/", "instances/"):
    assert summary[f"{prefix}round_trip_exact"] == 1.0, prefix
    assert summary[f"{prefix}unk_fraction"] == 0.0 and summary[f"{prefix}fit_num_tokens"] == 1.0
  assert summary["boxes/tokens_max"] > 5 and summary["metadata/tokens_max"] >= 11  # 10 words.
  tok = text.load(summary["tokenizer"])
  assert tok.path.endswith("wordpiece_scenes21.json")
  assert summary["instances/tokens_max"] >= 9  # An object: shape, 4 coordinates, 4 mask rows.
  assert len(tok.encode("count brightness 1111")) == 3  # Words of every modality are whole pieces.
  config.data.modalities = ("caption", "boxes", "palette", "metadata")  # No image: no box size.
  config.shared_with = ("boxes", "palette", "metadata")
  with pytest.raises(ValueError, match=r"config.data: .*boxes text needs the image size"):
    text_tokenizer.run(config, str(tmp_path / "bad"))


def test_misplaced_sentinel_is_refused(tmp_path):
  spec = _4m_format_json(["a"], classes=[])
  spec["model"]["vocab"]["[S_7]"], spec["model"]["vocab"]["[S_8]"] = 12, 11
  for t in spec["added_tokens"]:
    t["id"] = spec["model"]["vocab"][t["content"]]
  path = tmp_path / "sentinels.json"
  path.write_text(json.dumps(spec))
  with pytest.raises(ValueError, match=r"sentinels.json.*\[S_7\] has id 12"):
    text.load(str(path))
