"""4M-21's boxes, palette, metadata and instances texts through the registry alone: the
scenes' extras -> one text vocabulary shared with the caption -> token shards
-> pretraining with them as inputs and targets -> generation steered by them,
scored against the scene's boxes and count. Nothing in m4/models/ names them."""

import json
import os
import runpy

import numpy as np
import pytest

from m4 import modalities
from m4 import tokenizers as vq_tokenizers
from m4 import workdir as workdir_lib
from m4.data import scene_sequences
from m4.data import token_shards
from m4.jobs import generate
from m4.jobs import pretokenize
from m4.jobs import pretrain
from m4.jobs import text_tokenizer
from m4.tokenizers import text
from tests import pretrain_setup as S
from tests.pretrain_setup import assets_fixture  # pylint: disable=unused-import

TEXTS = scene_sequences.KINDS  # boxes, palette, metadata, instances.
SIZES = dict(extras=scene_sequences.EXTRAS, num_train=48, num_validation=8, num_test=8)


def _config(path, arg=None):
  return runpy.run_path(os.path.join(S.REPO, "configs", path))["get_config"](arg)


def test_texts_tokenize_pretrain_and_steer_generation(assets, tmp_path):
  data = S.data_config(str(tmp_path / "data"), **SIZES)
  shared = _config("tokenizers/caption_scenes.py", "shared")
  shared.data.update({k: v for k, v in data.items() if k != "modalities"})
  vocab = text_tokenizer.run(shared, str(tmp_path / "text"))["tokenizer"]
  texts = {n: vocab for n in ("caption",) + TEXTS}

  tokens = str(tmp_path / "tokens")
  config = S.pretokenize_config(assets, random_views=1)
  config.data = data
  config.tokenize = tuple(config.tokenize) + TEXTS + ("box_map",)
  config.tokenizers.update(texts)
  config.tokenizers.box_map = assets["tokenizers"]["semseg"]  # The registry's: semseg's.
  pretokenize.pretokenize(config, tokens, progress=False)
  tok = text.load(vocab)
  record = token_shards.TokenShardSource(tokens, "train")[5]
  for name in TEXTS:  # Each view's text, tokenized: view 0 is the central crop.
    assert record[name].shape == (2, modalities.get(name).num_tokens)
    assert tok.decode(record[name][0]) == record[f"text/{name}"]
  assert record["text/metadata"].startswith("count ")
  semseg_vq = vq_tokenizers.load(assets["tokenizers"]["semseg"])  # The boxes as a map, tokenized.
  drawn = scene_sequences.box_map(record["text/boxes"], tuple(config.data.image_size))
  np.testing.assert_array_equal(record["box_map"][0].reshape(semseg_vq.grid),
                                np.asarray(semseg_vq.encode(drawn[None]))[0].reshape(semseg_vq.grid))
  config.tokenizers.box_map = assets["tokenizers"]["rgb"]  # Not a tokenizer the registry names.
  with pytest.raises(workdir_lib.ConfigError, match="tokenizers.box_map"):
    pretokenize.pretokenize(config, str(tmp_path / "bad_tokens"), progress=False)

  names = ("rgb_pixels", "rgb", "semseg", "caption") + TEXTS
  tiny = runpy.run_path(os.path.join(S.REPO, "configs", "pretrain", "scenes_tiny.py"))
  run = str(tmp_path / "pretrain")
  c = S.pretrain_config(assets, tokens, total_steps=2, checkpoint_every=2)
  c.data = S.data_config(data.dir, **{**SIZES, "batch_size": 16})
  c.tokenizers.update(texts)
  c.optimizer.warmup_steps = 1
  c.masking = tiny["mixture"](names)
  c.model.update(encoder_modalities=names, decoder_modalities=names[1:])
  summary = pretrain.run(c, run)
  assert summary["steps"] == 2 and np.isfinite(summary["train_loss"]) and np.isfinite(summary["val_loss"])

  gen = runpy.run_path(os.path.join(S.REPO, "configs", "generate", "common.py"))["base"](
      inputs=("boxes",), targets=("semseg", "metadata", "instances"), chained=True)
  gen.init = run
  gen.data = S.data_config(data.dir, **{**SIZES, "batch_size": 4})
  gen.tokenizers.update(dict(rgb=assets["tokenizers"]["rgb"],
                             semseg=assets["tokenizers"]["semseg"], **texts))
  gen.num_samples, gen.grid_rows = 6, 2
  gen.decoding.semseg.num_steps = 2
  gen.decoding.metadata.max_length = 12
  gen.decoding.instances.max_length = 10
  workdir = str(tmp_path / "generate")
  summary = generate.run(gen, workdir)
  assert os.path.getsize(summary["grid"]) > 1000  # The boxes drawn beside the generated map.
  metrics = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
  steering = ("boxes->semseg/boxes", "boxes->semseg/count", "boxes->semseg/presence")
  scored = ("boxes->semseg", "boxes+semseg+metadata->instances", *steering)
  assert set(metrics["generated"]) == {*scored, *(f"{k}/other_scene" for k in scored)}
  assert set(metrics["ceiling"]) == {"semseg", "semseg/boxes", "semseg/count", "semseg/presence",
                                     "instances"}
  assert metrics["ceiling"]["instances"]["instance_f1"] == 1.0  # The true texts, tokenized.
  assert 0 <= metrics["generated"]["boxes+semseg+metadata->instances"]["instance_f1"] <= 1
  assert 0 <= metrics["generated"]["boxes->semseg/boxes"]["box_hit_rate"] <= 1
