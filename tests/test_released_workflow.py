"""A released 4M end to end in m4, on tiny random-weight conversions: converted
tokenizers by path in the generate and pretokenize jobs, and
colabs/4m7_from_a_photo.ipynb (with the weights and without).

The model is tests/fixtures/ml4m_pixels (4M's rgb@224 pixels, tok_rgb,
tok_depth, caption at 64 px) with tok_normal and tok_semseg added (and caption
rows for every id of m4's WordPiece file), written in 4M's format and
converted with m4.models.convert; the tokenizers are the DiVAE / VQ-VAE
fixtures converted at 16 px (4 x 4 tokens, as the model's).
"""

import json
import os
import runpy

import ml_collections
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

from m4.models import convert
from m4.tokenizers import released_tokenizer
from m4.tokenizers import text as text_lib
from m4.workdir import ConfigError
from tests.conftest import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures")
SUFFIX = "_wf"  # Converted names (depth@64_wf, ...) apart from other tests' conversions.
VOCAB = 64  # The tokenizer fixtures' codebooks.
CAPTION_TOKENS = 6
TEXT = os.path.join(text_lib.ASSETS_DIR, "wordpiece_scenes.json")
TOKENIZERS = {"depth": ("ml4m_tok_divae_depth", "depth"),  # {key: (fixture, --modality)}
              "normal": ("ml4m_tok_divae_rgb", "normal"), "semseg": ("ml4m_tok_semseg", None)}


def _write_4m7_like(out: str) -> str:
  """ml4m_pixels with 64-code depth, normal and semseg targets, in 4M's format."""
  src = os.path.join(FIXTURES, "ml4m_pixels")
  tensors = load_file(os.path.join(src, "model.safetensors"))
  cfg = json.load(open(os.path.join(src, "config.json")))
  rng = np.random.default_rng(0)
  depth = "decoder_embeddings.tok_depth@224"
  for k in ("token_emb.weight", "to_logits.weight"):
    tensors[f"{depth}.{k}"] = tensors[f"{depth}.{k}"][:VOCAB]
  cfg["modalities"]["tok_depth@224"]["vocab_size"] = VOCAB
  words = text_lib.load(TEXT).vocab_size  # Caption rows for every id of the text tokenizer.
  extra = rng.normal(0, 0.02, (words - cfg["modalities"]["caption"]["vocab_size"],
                               tensors["mask_token"].shape[-1]))
  for k in ("encoder_embeddings.caption.token_emb.weight",
            "decoder_embeddings.caption.token_emb.weight",
            "decoder_embeddings.caption.to_logits.weight"):
    tensors[k] = np.concatenate([tensors[k], extra.astype(tensors[k].dtype)])
  cfg["modalities"]["caption"]["vocab_size"] = words
  for name in ("tok_normal@224", "tok_semseg@224"):
    rows = rng.permutation(VOCAB)
    for k in ("token_emb.weight", "to_logits.weight"):
      tensors[f"decoder_embeddings.{name}.{k}"] = tensors[f"{depth}.{k}"][rows]
    tensors[f"decoder_embeddings.{name}.pos_emb"] = tensors[f"{depth}.pos_emb"]
    tensors[f"decoder_embeddings.{name}.mod_emb"] = rng.normal(
        0, 0.02, tensors[f"{depth}.mod_emb"].shape).astype(np.float32)
    cfg["modalities"][name] = dict(cfg["modalities"]["tok_depth@224"])
    cfg["decoder_modalities"].append(name)
  os.makedirs(out)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
            os.path.join(out, "model.safetensors"))
  json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
  return out


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  """{model, depth, normal, semseg, text, names}: converted directories and m4 names."""
  root = tmp_path_factory.mktemp("released")
  _, plan = convert.convert_checkpoint(_write_4m7_like(str(root / "4m7_tiny")),
                                       out=str(root / "model"), suffix=SUFFIX)
  paths = {"model": str(root / "model"), "names": plan.names, "text": TEXT}
  for key, (fixture, modality) in TOKENIZERS.items():
    tok, _ = released_tokenizer.from_reference(os.path.join(FIXTURES, fixture), name=f"tok_{key}",
                                               modality=modality, image_size=16)
    paths[key] = tok.save(str(root / f"tok_4m_{key}"))
  tok, _ = released_tokenizer.from_reference(os.path.join(FIXTURES, "ml4m_tok_semseg"),
                                             image_size=32)  # 8 x 8 tokens: not the model's.
  paths["semseg_32px"] = tok.save(str(root / "tok_4m_semseg_32px"))
  return paths


def _config(released, tmp_path):
  names = released["names"]
  c = runpy.run_path(os.path.join(REPO, "configs", "generate", "rgb2all.py"))["get_config"]()
  common = runpy.run_path(os.path.join(REPO, "configs", "generate", "common.py"))
  c.init = released["model"]
  c.inputs = (names["rgb@224"],)
  c.targets = tuple(names[f"tok_{k}@224"] for k in ("depth", "normal", "semseg")) + (
      names["caption"],)
  c.chained = True  # As 4M's demo: each target conditions the next.
  c.pixel_normalization = "imagenet"
  # Keys with "@": set in Python (ml_collections' command line cannot name them).
  c.tokenizers = ml_collections.ConfigDict({names[f"tok_{k}@224"]: released[k]
                                            for k in ("depth", "normal", "semseg")})
  c.tokenizers[names["caption"]] = released["text"]
  # The notebook's settings (4M's for RGB to anything), one image a batch: the notebook
  # then finds these programs in the session's compilation cache.
  c.decoding = ml_collections.ConfigDict()
  for t in c.targets[:-1]:
    c.decoding[t] = dict(common["IMAGE_DECODING"], scheme="roar", num_steps=1, temperature=0.01,
                         cfg_scale=2.0)
  c.decoding[c.targets[-1]] = dict(common["CAPTION_DECODING"], temperature=0.3, top_p=0.8,
                                   max_length=CAPTION_TOKENS)
  c.data.update(dict(dir=str(tmp_path / "scenes"), num_train=1, num_validation=1, num_test=2,
                     batch_size=1))
  c.num_samples, c.grid_rows = 2, 2
  return c


def test_generate_job_takes_converted_tokenizers_by_path(released, tmp_path):
  from m4.jobs import generate  # pylint: disable=g-import-not-at-top
  config = _config(released, tmp_path)
  summary = generate.run(config, str(tmp_path / "gen"))
  metrics = json.load(open(summary["metrics"]))
  caption = config.targets[-1]
  # 4M's units are not m4's: the dense targets are decoded and drawn, only the caption scored.
  label = f"{'+'.join(config.inputs + config.targets[:3])}->{caption}"
  assert sorted(metrics["generated"]) == [label, f"{label}/other_scene"]
  samples = [json.loads(line.rstrip(",")) for line in
             open(tmp_path / "gen" / "generated.json").read().splitlines()[1:-1]]
  assert len(samples) == 2
  assert all(len(s["tokens"][t]) == 16 and max(s["tokens"][t]) < VOCAB
             for s in samples for t in config.targets[:3])
  grid = np.asarray(Image.open(summary["grid"]))
  assert grid.shape[1] > 5 * 64  # rgb | depth (generated, truth) | normal | semseg (both).
  # Errors name the field and the path (the job's own loader, without the job around it).
  depth = config.targets[0]
  with pytest.raises(ConfigError, match=rf"config.tokenizers.{depth}: .*no_such_tokenizer"):
    generate.load_tokenizers(config.init, [depth], {depth: str(tmp_path / "no_such_tokenizer")})
  with pytest.raises(ConfigError, match=rf"config.tokenizers.{depth}: .*tok_4m_semseg_32px has"
                     r" grid \(8, 8\).*convert it with --image_size=16"):
    generate.load_tokenizers(config.init, [depth], {depth: released["semseg_32px"]})
  with pytest.raises(ConfigError, match=rf"config.tokenizers.{caption}: names no text tokenizer"):
    generate.load_tokenizers(config.init, [caption])
  config.diffusion_steps = 0
  with pytest.raises(ConfigError, match=r"config.diffusion_steps: must be >= 1"):
    generate.run(config, str(tmp_path / "gen0"))
  assert not os.path.exists(tmp_path / "gen0")  # Refused before writing anything.


def _run_notebook(env, monkeypatch):
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  path = os.path.join(REPO, "colabs", "4m7_from_a_photo.ipynb")
  nb = nbformat.read(path, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "stored with outputs"
  for k, v in {**env, "PYTHONPATH": REPO}.items():
    monkeypatch.setenv(k, v)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": os.path.dirname(path)}}).execute()
  texts = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  return texts, images


def test_notebook_runs_a_converted_4m_from_a_photo(released, tmp_path, monkeypatch):
  photo = tmp_path / "photo.jpg"  # Not square, not the model's size: cropped and resized.
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(photo)
  texts, images = _run_notebook({
      "M4_4M_MODEL": released["model"], "M4_4M_DEPTH": released["depth"],
      "M4_4M_NORMAL": released["normal"], "M4_4M_SEMSEG": released["semseg"],
      "M4_4M_TEXT": released["text"], "M4_PHOTO": str(photo), "M4_OUT": str(tmp_path / "out"),
      "M4_CAPTION_TOKENS": str(CAPTION_TOKENS)}, monkeypatch)
  assert len(images) >= 2, texts  # The photo, then it beside depth, normals and semseg.
  assert "caption:" in texts
  out = sorted(os.listdir(tmp_path / "out"))
  assert out == ["caption.txt", "depth.png", "normal.png", "photo.png", "semseg.png"], out
  depth = np.asarray(Image.open(tmp_path / "out" / "depth.png"))
  assert depth.shape == (16, 16, 3)


def test_notebook_without_weights_says_what_to_download(tmp_path, monkeypatch):
  texts, images = _run_notebook({"M4_4M_MODEL": str(tmp_path / "absent"),
                                 "M4_OUT": str(tmp_path / "out")}, monkeypatch)
  assert not images and not os.path.exists(tmp_path / "out")
  assert "EPFL-VILAB/4M-7_B_CC12M" in texts and "python -m m4.tools.convert_4m " in texts
  assert "python -m m4.tools.convert_4m_tokenizer" in texts and "skipped" in texts


def test_pretokenize_takes_converted_tokenizers_by_path(released, tmp_path):
  from m4.data import token_shards  # pylint: disable=g-import-not-at-top
  from m4.jobs import pretokenize  # pylint: disable=g-import-not-at-top
  names = released["names"]
  depth, semseg, caption = (names[k] for k in ("tok_depth@224", "tok_semseg@224", "caption"))
  c = runpy.run_path(os.path.join(REPO, "configs", "pretokenize", "scenes.py"))["get_config"]()
  c.tokenize = (depth, semseg, caption)
  c.tokenizers = ml_collections.ConfigDict({depth: released["depth"], semseg: released["semseg"],
                                            caption: released["text"]})
  c.data.update(dict(dir=str(tmp_path / "scenes"), num_train=2, num_validation=1, num_test=1,
                     image_size=(16, 16)))  # The tokenizers' size.
  c.splits, c.random_views, c.batch_size, c.grid_samples = ("train",), 0, 2, 1
  summary = pretokenize.run(c, str(tmp_path / "tokens"))
  assert summary["splits"]["train"]["samples"] == 2 and os.path.getsize(summary["grid"]) > 100
  rec = token_shards.TokenShardSource(str(tmp_path / "tokens"), "train")[0]
  assert rec[depth].shape == (1, 4, 4) and rec[semseg].max() < VOCAB
  c.tokenizers[depth] = ""  # The converted modality's registry entry names no tokenizer.
  with pytest.raises(ConfigError, match=rf"config.tokenizers.{depth}: names no tokenizer"):
    pretokenize.run(c, str(tmp_path / "bad"))
