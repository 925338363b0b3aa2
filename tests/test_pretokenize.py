"""Pre-tokenization: the tokens are the tokenizers' of aligned views; resumable;
shards made with other settings or tokenizers are refused."""

import os

import numpy as np
import pytest

from m4 import tokenizers
from m4.data import pretrain_data
from m4.data import record_files
from m4.data import scenes
from m4.data import token_shards
from m4.data import transforms
from m4.jobs import pretokenize
from m4.workdir import ConfigError
from tests import pretrain_setup as S
from tests.pretrain_setup import assets_fixture, shards_fixture  # pylint: disable=unused-import


def test_records_hold_the_tokens_of_aligned_views(assets, shards):
  spec = token_shards.read_spec(shards)
  assert spec["splits"]["train"] == {"num_samples": 96, "num_shards": 3, "num_views": 3}
  assert spec["splits"]["validation"]["num_views"] == 1
  source = token_shards.TokenShardSource(shards, "train")
  raw = scenes.ScenesSource(assets["data"], "train")
  toks = {n: tokenizers.load(p) for n, p in assets["tokenizers"].items()}
  text = pretokenize.Tokenizers(S.pretokenize_config(assets)).text["caption"]
  random_crop = transforms.AlignedCrop((32, 32), crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25),
                                       flip=True)
  for i in (0, 57):
    rec, sample = source[i], raw[i]
    assert int(rec["id"]) == i and rec["rgb"].shape == (3, 8, 8) and rec["caption"].shape == (3, 48)
    for v in range(3):
      rng = lambda: np.random.default_rng([0, pretokenize.zlib.crc32(b"train"), i, v])
      view = (random_crop.apply(sample, rng()) if v else
              transforms.AlignedCrop((32, 32), random=False).apply(sample, None))
      box = random_crop.crop_box(32, 32, rng()) if v else (0, 0, 32, 32, False)
      np.testing.assert_array_equal(rec["crop"][v], np.asarray(box, np.float32))
      for name, tok in toks.items():  # Every modality tokenized from the same crop.
        np.testing.assert_array_equal(rec[name][v], tok.encode(view[name][None])[0])
      np.testing.assert_array_equal(rec["caption"][v], text.encode_padded(view["caption"], 48))
      # The pixel input (rgb_pixels): the view's RGB itself, exactly, as uint8.
      assert rec["rgb_pixels"].dtype == np.uint8
      np.testing.assert_array_equal(rec["rgb_pixels"][v] / np.float32(255), view["rgb"])
    assert rec["text/caption"] == sample["caption"]
    np.testing.assert_array_equal(rec["labels"]["count"], sample["labels"]["count"])
    assert not np.array_equal(rec["rgb"][1], rec["rgb"][2])  # Views differ.


def test_a_killed_run_resumes_without_rewriting_finished_shards(assets, shards, tmp_path,
                                                               monkeypatch):
  out = str(tmp_path / "tokens")
  real = pretokenize._tokenize_chunk  # pylint: disable=protected-access
  calls = []

  def crash_in_second_shard(*args):
    calls.append(1)
    if len(calls) == 3:  # Chunks of 16 samples; shard 0 holds 32, so this is in shard 1.
      raise KeyboardInterrupt
    return real(*args)

  monkeypatch.setattr(pretokenize, "_tokenize_chunk", crash_in_second_shard)
  with pytest.raises(KeyboardInterrupt):
    pretokenize.pretokenize(S.pretokenize_config(assets), out, progress=False)
  monkeypatch.setattr(pretokenize, "_tokenize_chunk", real)
  first = token_shards.shard_path(out, "train", 0, 3)
  assert os.path.exists(first)
  assert token_shards.missing_shards(out, "train", token_shards.read_spec(out)) == [1, 2]
  with pytest.raises(FileNotFoundError, match="missing"):  # Never read half a split.
    token_shards.TokenShardSource(out, "train")
  # What a SIGKILLed writer leaves: a hidden temp file of a process that is gone.
  stale = record_files.partial_prefix(token_shards.shard_path(out, "train", 1, 3)) + "999999999"
  with open(stale, "wb") as f:
    f.write(b"half a shard")
  before = os.stat(first)
  summary = pretokenize.pretokenize(S.pretokenize_config(assets), out, progress=False)
  assert summary["complete"] and summary["splits"]["train"]["written_shards"] == 2
  assert not os.path.exists(stale)
  after = os.stat(first)
  assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
  for split in ("train", "validation", "test"):  # Byte for byte what one run writes.
    for a, b in zip(sorted(os.listdir(os.path.join(out, split))),
                    sorted(os.listdir(os.path.join(shards, split)))):
      with open(os.path.join(out, split, a), "rb") as fa, \
           open(os.path.join(shards, split, b), "rb") as fb:
        assert fa.read() == fb.read(), (split, a)


def test_other_settings_are_refused_and_nothing_changes(assets, shards):
  spec_before = open(os.path.join(shards, "spec.json")).read()
  with pytest.raises(ConfigError, match="random_views"):
    pretokenize.pretokenize(S.pretokenize_config(assets, random_views=1), shards, progress=False)
  assert open(os.path.join(shards, "spec.json")).read() == spec_before


def test_pretraining_with_other_tokenizers_names_both(assets, shards, tmp_path):
  other = S.make_tokenizer(str(tmp_path / "other_semseg"), "semseg", seed=7)
  config = S.pretrain_config(assets, shards)
  pretrain_data.PretrainData(config)  # The shards' own tokenizers: fine.
  config.tokenizers.semseg = other
  with pytest.raises(ConfigError) as e:
    pretrain_data.PretrainData(config)
  assert assets["tokenizers"]["semseg"] in str(e.value) and other in str(e.value)
  assert "config.tokenizers.semseg" in str(e.value)
