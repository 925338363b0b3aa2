"""Bad input data (issue 15): damaged images, empty or escaping dataset folders and
tokenizer directories are refused with one error naming the file or sample,
or skipped where `on_error="skip"`. experiments/faults/README.md tabulates the cases.
"""

import io
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from m4 import workdir as workdir_lib
from m4.data import image_files
from m4.data import pipeline
from m4.data import scenes
from m4.data import sources
from m4.data import token_shards
from m4.jobs import pretokenize
from m4.tokenizers import vq_tokenizer
from m4.workdir import ConfigError, DataError
from tests import pretrain_setup as S
from tests.pretrain_setup import assets_fixture  # pylint: disable=unused-import
from tests.test_faults import _truncate


# ---------------------------------------------------------------------------
# 3, 6, 7: bad data.


def _write_folder(root, n=6, size=S.RESOLUTION):
  """n aligned scenes samples as files root/train/<modality>/s<i>.<ext>."""
  for i in range(n):
    sample = scenes.render(i, split="train", resolution=size, max_objects=3)
    for m in ("rgb", "depth", "semseg", "caption"):
      os.makedirs(f"{root}/train/{m}", exist_ok=True)
    Image.fromarray(sample["rgb"]).save(f"{root}/train/rgb/s{i}.png")
    depth_mm = np.clip(np.nan_to_num(sample["depth"] * 1000, posinf=0), 0, 65535)
    Image.fromarray(np.round(depth_mm).astype(np.uint16)).save(f"{root}/train/depth/s{i}.png")
    Image.fromarray(sample["semseg"].astype(np.uint8)).save(f"{root}/train/semseg/s{i}.png")
    with open(f"{root}/train/caption/s{i}.txt", "w", encoding="utf-8") as f:
      f.write(sample["caption"])
  return str(root)


def _folder_data(root, **kw):
  return pipeline.data_config(**{**dict(
      kind="folder", dir=str(root), image_size=(S.RESOLUTION, S.RESOLUTION),
      crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25), flip=True, batch_size=4), **kw})


def _pretokenize_folder(assets_, root, out, **data):
  c = S.pretokenize_config(assets_, splits=("train",), view_splits=(), random_views=0,
                           samples_per_shard=3)
  c.data = _folder_data(root, **data)
  c.tokenize = ("rgb", "depth", "semseg")
  return pretokenize.pretokenize(c, str(out), progress=False)


def test_bad_samples_are_named_or_skipped_in_pretokenization(assets, tmp_path):
  root = _write_folder(tmp_path / "data")
  corrupt = f"{root}/train/rgb/s1.png"
  _truncate(corrupt, 0.6)
  classes = f"{root}/train/semseg/s4.png"
  semseg = np.asarray(Image.open(classes)).copy()
  semseg[3, 5] = 200  # Beyond the tokenizer's classes (and not 255, unlabelled).
  Image.fromarray(semseg).save(classes)
  # Raise (the default): the first bad file is named.
  with pytest.raises(DataError, match=re.escape(corrupt)):
    _pretokenize_folder(assets, root, tmp_path / "raise")
  # Skip: both bad samples are left out, counted and listed beside their shards.
  out = tmp_path / "skip"
  summary = _pretokenize_folder(assets, root, out, on_error="skip")
  info = summary["splits"]["train"]
  assert info["skipped"] == 2 and info["samples"] == 4 and summary["complete"]
  assert corrupt in info["skipped_first"][0] and classes in info["skipped_first"][1]
  assert f"class ids must be in [0, {len(scenes.CLASSES)})" in info["skipped_first"][1]
  source = token_shards.TokenShardSource(str(out), "train")
  assert sorted(int(source[i]["id"]) for i in range(len(source))) == [0, 2, 3, 5]
  # The semseg check names the file, not a batch index, when raising too.
  Image.fromarray(np.asarray(Image.open(f"{root}/train/rgb/s0.png"))).save(corrupt)
  with pytest.raises(DataError, match=re.escape(classes) + r".*200 at \(0, 3, 5\)"):
    _pretokenize_folder(assets, root, tmp_path / "raise2")
  # Tokenized on the fly (pretraining without shards): the sample's id is named.
  from m4 import tokenizers  # pylint: disable=g-import-not-at-top
  from m4.data import pretrain_data  # pylint: disable=g-import-not-at-top
  by_name = pretrain_data.ByModality(("semseg",), {"semseg": tokenizers.load(
      assets["tokenizers"]["semseg"])})
  with pytest.raises(DataError, match=r"sample 4 .*semseg.*200"):
    by_name.map({"semseg": semseg.astype(np.int32), "id": np.int64(4)})


def test_an_empty_folder_dataset_is_refused(tmp_path):
  for m in ("rgb", "caption"):
    os.makedirs(tmp_path / "train" / m)
  with pytest.raises(ConfigError, match="holds no samples"):
    sources.make_source(_folder_data(tmp_path), "train")


def test_garbage_in_a_jpeg_is_an_error_naming_the_file(tmp_path):
  root = _write_folder(tmp_path, n=3)
  rgb = np.asarray(Image.open(f"{root}/train/rgb/s1.png"))
  os.remove(f"{root}/train/rgb/s1.png")
  path = f"{root}/train/rgb/s1.jpg"
  Image.fromarray(rgb).save(path, quality=90)
  source = sources.make_source(_folder_data(root), "train")
  assert source[1]["rgb"].shape == (S.RESOLUTION, S.RESOLUTION, 3)  # A good JPEG reads.
  with open(path, "rb") as f:
    good = f.read()
  sos = good.index(b"\xff\xda")
  start, end = sos + 2 + int.from_bytes(good[sos + 2:sos + 4], "big"), len(good) - 2
  mid, k = (start + end) // 2, min(64, (end - start) // 3)
  for seed in range(20):  # Random bytes in the image data that PIL decodes without a word.
    data = bytearray(good)
    data[mid:mid + k] = np.random.default_rng(seed).integers(0, 256, k, dtype=np.uint8).tobytes()
    with Image.open(io.BytesIO(bytes(data))) as im:
      im.load()
    try:
      image_files.check_jpeg(bytes(data))
    except ValueError:
      break
  else:
    pytest.fail("no garbage of 20 was caught")
  with open(path, "wb") as f:
    f.write(bytes(data))
  with pytest.raises(sources.FolderError, match=re.escape(path)):
    source[1]
  skip = sources.make_source(_folder_data(root, on_error="skip"), "train")
  assert skip[1] is None and list(skip.skipped) == [path]
  with pytest.raises(ValueError, match="not a JPEG"):
    image_files.check_jpeg(b"\x89PNG\r\n")


def test_a_png_with_a_bad_checksum_is_an_error_naming_the_file(tmp_path):
  root = _write_folder(tmp_path, n=2)
  path = f"{root}/train/semseg/s0.png"
  with open(path, "rb") as f:
    data = bytearray(f.read())
  at = data.index(b"IDAT") + 8  # A byte of the compressed data.
  data[at] ^= 0x01
  with open(path, "wb") as f:
    f.write(bytes(data))
  with pytest.raises(sources.FolderError, match=re.escape(path) + ".*damaged PNG"):
    sources.make_source(_folder_data(root), "train")[0]


def test_images_smaller_than_image_size_are_refused_unless_upscaling(tmp_path):
  root = _write_folder(tmp_path, n=2, size=16)
  with pytest.raises(sources.FolderError, match=r"rgb/s0\.png.*\(16, 16\).*smaller.*upscale"):
    sources.make_source(_folder_data(root), "train")[0]
  source = sources.make_source(_folder_data(root, upscale=True), "train")
  assert source[0]["rgb"].shape == (16, 16, 3)


# ---------------------------------------------------------------------------
# 10: nothing is read from outside a dataset root or a tokenizer directory.


def test_folder_source_refuses_symlinks_out_of_the_dataset(tmp_path):
  root = _write_folder(tmp_path / "data", n=3)
  secret = tmp_path / "secret.txt"
  secret.write_text("outside the dataset")
  link = f"{root}/train/caption/s1.txt"
  os.remove(link)
  os.symlink(secret, link)
  inside = f"{root}/train/caption/s2.txt"  # A symlink within the dataset is fine.
  os.remove(inside)
  os.symlink(f"{root}/train/caption/s0.txt", inside)
  with pytest.raises(sources.FolderError, match=re.escape(link) + ".*outside the dataset"):
    sources.make_source(_folder_data(root), "train")
  skip = sources.make_source(_folder_data(root, on_error="skip"), "train")
  assert len(skip) == 2 and list(skip.skipped) == [link]
  assert [skip[i]["caption"] for i in range(2)] == [skip[0]["caption"]] * 2


def test_tokenizer_fingerprint_refuses_traversal(assets, tmp_path):
  tok = str(tmp_path / "tok")
  shutil.copytree(assets["tokenizers"]["rgb"], tok)
  spec_path = os.path.join(tok, vq_tokenizer.SPEC_FILE)
  spec = workdir_lib.read_json(spec_path)
  good = token_shards.fingerprint(tok)
  for step in ("../../../../etc/ssl", "0", -1, 1.5, True):
    workdir_lib.write_json(spec_path, dict(spec, step=step))
    with pytest.raises(DataError, match=re.escape(spec_path) + ".*'step'"):
      token_shards.fingerprint(tok)
    with pytest.raises(ValueError, match="'step'"):
      vq_tokenizer.TokenizerSpec.from_json(dict(spec, step=step))
  workdir_lib.write_json(spec_path, spec)
  assert token_shards.fingerprint(tok) == good
  outside = tmp_path / "outside.bin"
  outside.write_bytes(b"system file")
  os.symlink(outside, os.path.join(tok, "checkpoints", str(spec["step"]), "extra"))
  with pytest.raises(DataError, match="outside the tokenizer directory"):
    token_shards.fingerprint(tok)
