"""Sources of raw samples: TFDS (mocked) readers, aligned folders and their bad inputs."""

import os

import numpy as np
import pytest
from PIL import Image

from m4.data import pipeline
from m4.data import sources
from m4.workdir import ConfigError


def _tfds_config(name, **kw):
  return pipeline.data_config(kind="tfds", name=name, batch_size=2, image_size=(32, 32), **kw)


def test_tfds_nyu_depth_v2_reads_rgb_and_depth():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=4):
    source = sources.make_source(_tfds_config("nyu_depth_v2"), "train")
    raw = tfds.data_source("nyu_depth_v2", split="train")
    assert len(source) == 4
    sample = source[1]
    assert set(sample) == {"rgb", "depth", "id"} and sample["id"] == 1
    assert sample["rgb"].dtype == np.uint8 and sample["rgb"].shape == (480, 640, 3)
    assert sample["depth"].dtype == np.float32 and sample["depth"].shape == (480, 640)
    np.testing.assert_array_equal(sample["rgb"], raw[1]["image"])
    want = raw[1]["depth"].astype(np.float32)
    want = np.where(np.isfinite(want) & (want > 0), want, 0)
    np.testing.assert_array_equal(sample["depth"], want)
    batch = next(pipeline.make_iterator(_tfds_config("nyu_depth_v2"), "train", seed=0,
                                        training=False))
  assert batch["rgb"].shape == (2, 32, 32, 3) and batch["depth"].shape == (2, 32, 32)


def test_tfds_dataset_not_prepared_says_how_to_prepare_it(tmp_path):
  with pytest.raises(ConfigError, match=r"config.data.name='nyu_depth_v2'.*tfds build"
                     r" nyu_depth_v2 --file_format=array_record"):
    sources.make_source(_tfds_config("nyu_depth_v2", dir=str(tmp_path)), "train")
  assert not any(tmp_path.rglob("*.tar.gz"))  # Nothing was downloaded.


def test_tfds_coco_captions_takes_the_first_caption():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=3):
    source = sources.make_source(_tfds_config("coco_captions"), "train")
    raw = tfds.data_source("coco_captions", split="train")
    for i in range(3):
      sample = source[i]
      assert set(sample) == {"rgb", "caption", "id"}
      texts = raw[i]["captions"]["text"]
      first = texts[0].decode() if isinstance(texts[0], bytes) else str(texts[0])
      assert isinstance(sample["caption"], str) and sample["caption"] == first
      np.testing.assert_array_equal(sample["rgb"], raw[i]["image"])
  with pytest.raises(ConfigError, match="config.data.tfds_features"):
    sources.TfdsSource("mnist", "train")


def _png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _folder(root, n=3, size=(20, 24)):
  """n aligned samples under root/train/<modality>/s<i>.<ext>; returns them."""
  rng = np.random.default_rng(0)
  samples = []
  for i in range(n):
    rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    depth_mm = rng.integers(0, 20000, size, dtype=np.uint16)
    semseg = rng.integers(0, 6, size, dtype=np.uint8)
    _png(f"{root}/train/rgb/s{i}.png", rgb)
    _png(f"{root}/train/depth/s{i}.png", depth_mm)
    _png(f"{root}/train/semseg/s{i}.png", semseg)
    os.makedirs(f"{root}/train/caption", exist_ok=True)
    with open(f"{root}/train/caption/s{i}.txt", "w", encoding="utf-8") as f:
      f.write(f"caption {i}\n")
    samples.append((rgb, depth_mm, semseg))
  return samples


def _folder_config(root, **kw):
  return pipeline.data_config(**{**dict(kind="folder", dir=str(root), batch_size=2,
                                        image_size=(16, 16)), **kw})


def test_folder_reads_aligned_samples(tmp_path):
  samples = _folder(tmp_path)
  np.save(tmp_path / "train/depth/s3.npy", np.full((20, 24), np.nan, np.float32))
  Image.fromarray(samples[0][0]).save(tmp_path / "train/rgb/s3.jpg")
  _png(f"{tmp_path}/train/semseg/s3.png", samples[0][2])
  with open(tmp_path / "train/caption/s3.txt", "w", encoding="utf-8") as f:
    f.write("third")
  source = sources.make_source(_folder_config(tmp_path), "train")
  assert len(source) == 4 and source.num_skipped == 0
  for i, (rgb, depth_mm, semseg) in enumerate(samples):
    sample = source[i]
    np.testing.assert_array_equal(sample["rgb"], rgb)
    np.testing.assert_array_equal(sample["depth"], depth_mm.astype(np.float32) / 1000)
    np.testing.assert_array_equal(sample["semseg"], semseg)
    assert sample["caption"] == f"caption {i}" and sample["id"] == i
  last = source[3]
  assert (last["depth"] == 0).all() and last["rgb"].shape == (20, 24, 3)  # NaN: invalid.
  only = sources.make_source(_folder_config(tmp_path, modalities=("rgb", "caption")), "train")
  assert set(only[0]) == {"rgb", "caption", "id"}


def test_folder_missing_file_names_the_path_or_is_skipped(tmp_path):
  _folder(tmp_path)
  os.remove(tmp_path / "train/depth/s1.png")
  with pytest.raises(sources.FolderError, match=r"train/depth/s1\.\{png\|npy\}.*missing"):
    sources.make_source(_folder_config(tmp_path), "train")
  source = sources.make_source(_folder_config(tmp_path, on_error="skip"), "train")
  assert len(source) == 2 and source.num_skipped == 1
  assert [source[i]["caption"] for i in range(2)] == ["caption 0", "caption 2"]
  with pytest.raises(ConfigError, match="config.data.on_error"):
    sources.make_source(_folder_config(tmp_path, on_error="ignore"), "train")
  with pytest.raises(ConfigError, match="config.data.dir"):
    sources.make_source(_folder_config(tmp_path), "validation")


def test_folder_corrupt_png_names_the_path_or_is_skipped(tmp_path):
  _folder(tmp_path, n=4)
  bad = tmp_path / "train/semseg/s2.png"
  bad.write_bytes(bad.read_bytes()[:60])  # Truncated: the header survives, the data not.
  source = sources.make_source(_folder_config(tmp_path), "train")
  assert len(source) == 4  # Listing is cheap; decoding finds it.
  with pytest.raises(sources.FolderError, match=str(bad)):
    source[2]
  config = _folder_config(tmp_path, on_error="skip", crop_scale=(0.5, 1.0), image_size=(16, 16))
  source = sources.make_source(config, "train")
  it = pipeline.make_iterator(config, "train", seed=0, training=True, source=source)
  ids = np.concatenate([next(it)["id"] for _ in range(6)])
  assert set(ids) == {0, 1, 3}
  assert list(source.skipped) == [str(bad)]  # Read in several epochs, counted once.
  batches = list(pipeline.make_dataset(config, "train", seed=0, training=False, source=source))
  valid = np.concatenate([b["valid"] for b in batches])
  assert list(np.concatenate([b["id"] for b in batches])[valid]) == [0, 1, 3]


def test_folder_mismatched_sizes_name_both_files(tmp_path):
  _folder(tmp_path)
  _png(f"{tmp_path}/train/semseg/s0.png", np.zeros((20, 25), np.uint8))
  source = sources.make_source(_folder_config(tmp_path), "train")
  with pytest.raises(sources.FolderError, match=r"sizes differ.*rgb/s0\.png \(20, 24\).*"
                     r"semseg/s0\.png \(20, 25\)"):
    source[0]
  _png(f"{tmp_path}/train/semseg/s1.png", np.zeros((20, 24, 3), np.uint8))
  with pytest.raises(sources.FolderError, match=r"semseg/s1\.png.*one channel"):
    source[1]
  skip = sources.make_source(_folder_config(tmp_path, on_error="skip"), "train")
  assert skip[0] is None and skip[1] is None and skip[2] is not None and skip.num_skipped == 2


def test_tfds_imagenet_label_and_ade20k_semseg_conventions():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=3):
    source = sources.make_source(_tfds_config("imagenet2012"), "train")
    raw = tfds.data_source("imagenet2012", split="train")
    sample = source[2]
    assert set(sample) == {"rgb", "labels", "id"}
    assert sample["labels"]["label"].dtype == np.int32
    assert sample["labels"]["label"] == raw[2]["label"]
    ade = sources.make_source(_tfds_config("scene_parse150"), "train")
    raw = tfds.data_source("scene_parse150", split="train")[1]["annotation"][..., 0]
    got = ade[1]["semseg"]
    # ADE20K's class 0 ("other") is unlabelled; classes 1..150 become 0..149.
    np.testing.assert_array_equal(got, np.where(raw == 0, 255, raw.astype(np.int64) - 1))
    kept = sources.make_source(_tfds_config("scene_parse150", tfds_semseg_reduce_zero=False),
                               "train")[1]["semseg"]
    np.testing.assert_array_equal(kept, raw)
  with pytest.raises(ConfigError, match=r"tfds_features: unknown m4 keys \['labels/'\]"):
    sources.TfdsSource("imagenet2012", "train", features={"labels/": "label"})
