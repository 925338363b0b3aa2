"""Random-access sources of raw samples (the data contract), by `data.kind`.

    source = sources.make_source(config.data, "train")
    len(source), source[0]   # {"rgb": uint8 (H, W, 3), "depth": ..., "id": 0}

Kinds:
  * `scenes`: the procedural scenes dataset in `data.dir`, made on first use
    (`m4.data.scenes.ensure(data.dir, data)`, which reads the generation
    fields of `data`: resolution, max_objects, num_train, ...).
  * `tfds`: TFDS dataset `data.name` read with `tfds.data_source` (ArrayRecord,
    no TensorFlow graph at read time) from `data.dir` (TFDS's default when
    empty). Nothing is downloaded: prepare the dataset once with
    `tfds build NAME --file_format=array_record [--data_dir=DIR]`. `data.tfds_features` maps m4 keys to feature paths ("a/b" for
    nested features); empty uses `TFDS_FEATURES[data.name]`. A key
    "labels/NAME" reads an integer label into `labels[NAME]` (int32). A
    3-channel semseg feature (ADE20K's annotation PNGs repeat the class map in
    each channel) is read from its first channel. `data.tfds_semseg_reduce_zero`
    (None: as `TFDS_SEMSEG_REDUCE_ZERO` lists the dataset) maps class 0
    ("other", not a class) to 255 and class k to k - 1, as ADE20K is evaluated.
  * `folder`: aligned files `data.dir/<split>/<modality>/<sample_id>.<ext>`;
    nothing outside `data.dir` is read (a symlink out of it is refused),
    damaged images are errors (`m4.data.image_files`), and images smaller
    than `data.image_size` are refused unless `data.upscale`.

Every source yields numpy per the contract: rgb uint8 (H, W, 3), depth float32
metres with NaN/inf/negative set to 0, semseg uint8, caption str, and `id`
(int64, the index within the split).
"""

from __future__ import annotations

import collections
import io
import os
import threading
from typing import Mapping, Sequence

import numpy as np
from absl import logging
from PIL import Image

from m4.data import image_files
from m4.data import scenes
from m4.workdir import ConfigError, DataError

KINDS = ("scenes", "tfds", "folder")

# m4 key -> TFDS feature path. A feature holding several texts (COCO has five
# captions per image) gives its first one, in the order stored in the record,
# which TFDS keeps fixed: the same caption every epoch, on every host.
TFDS_FEATURES = {
    "nyu_depth_v2": {"rgb": "image", "depth": "depth"},
    "coco_captions": {"rgb": "image", "caption": "captions/text"},
    "scene_parse150": {"rgb": "image", "semseg": "annotation"},
    "imagenet2012": {"rgb": "image", "labels/label": "label"},
}
# Datasets whose semseg class 0 means "unlabelled" (the 150 ADE20K classes are 1..150).
TFDS_SEMSEG_REDUCE_ZERO = ("scene_parse150",)

FOLDER_EXTENSIONS = {
    "rgb": (".png", ".jpg", ".jpeg"),
    "depth": (".png", ".npy"),
    "semseg": (".png",),
    "caption": (".txt",),
}
ON_ERROR = ("raise", "skip")


def make_source(data, split: str):
  """The random-access source of `split` for the `config.data` ConfigDict."""
  kind = data.get("kind")
  if kind not in KINDS:
    raise ConfigError(f"config.data.kind: {kind!r} is not one of {KINDS}.")
  keep = tuple(data.get("modalities") or ())
  if kind == "scenes":
    directory = scenes.ensure(data.dir, data)  # Reads the SceneSpec fields of `data`.
    source = scenes.ScenesSource(directory, split)
  elif kind == "tfds":
    source = TfdsSource(data.name, split, data_dir=data.get("dir") or None,
                        features=dict(data.get("tfds_features") or {}) or None,
                        semseg_reduce_zero=data.get("tfds_semseg_reduce_zero"))
  else:
    source = FolderSource(os.path.join(data.dir, split), modalities=keep or None,
                          on_error=data.get("on_error", "raise"),
                          depth_png_scale=data.get("depth_png_scale", 1000.0),
                          dataset_root=data.dir,
                          min_size=None if data.get("upscale", False) else data.get("image_size"))
  return source if not keep else SelectKeys(source, keep)


class SelectKeys:
  """Keeps the given raw keys (and `id`) of another source's samples."""

  def __init__(self, source, keys: Sequence[str]):
    self.source = source
    self.keys = tuple(keys)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    sample = self.source[index]
    if sample is None:
      return None
    missing = [k for k in self.keys if k not in sample]
    if missing:
      raise KeyError(f"{self.source!r}[{index}] has no {missing} (config.data.modalities);"
                     f" it has {sorted(sample)}.")
    return {k: v for k, v in sample.items() if k in self.keys or k == "id"}

  def __repr__(self) -> str:
    return f"SelectKeys({self.source!r}, {self.keys})"


def _unwrap(source):
  while isinstance(source, SelectKeys):
    source = source.source
  return source


def describe(source, index: int, key: str | None = None) -> str:
  """Where sample `index` comes from: its `key` file for folder sources, else
  `source[index]`."""
  inner = _unwrap(source)
  if isinstance(inner, FolderSource) and key in inner.files[index]:
    return inner.files[index][key]
  return f"{inner!r}[{index}]"


def skip_reason(source, index: int) -> str:
  """Why `source[index]` was None (a folder source's record of the bad file)."""
  inner = _unwrap(source)
  if isinstance(inner, FolderSource):
    for path in inner.files[index].values():
      if path in inner.skipped:
        return f"{path}: {inner.skipped[path]}"
  return f"{inner!r}[{index}]: unreadable"


# ---------------------------------------------------------------------------
# Value conversions shared by the readers.


def as_rgb(x, where: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
    raise ValueError(f"{where}: rgb must be (H, W, 3), got shape {x.shape}.")
  if x.dtype != np.uint8:
    raise ValueError(f"{where}: rgb must be uint8, got {x.dtype}.")
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  return np.ascontiguousarray(x[..., :3])


def as_depth(x, where: str, scale: float = 1.0) -> np.ndarray:
  """Metres, float32; NaN, inf and negative values become 0 (invalid)."""
  x = np.asarray(x)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 2:
    raise ValueError(f"{where}: depth must be (H, W), got shape {x.shape}.")
  x = x.astype(np.float32) / np.float32(scale)
  return np.where(np.isfinite(x) & (x > 0), x, np.float32(0))


def as_semseg(x, where: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 2:
    raise ValueError(f"{where}: semseg must be (H, W) class ids, got shape {x.shape}.")
  if x.dtype != np.uint8:
    if x.size and (x.min() < 0 or x.max() > 255):
      raise ValueError(f"{where}: semseg class ids must be in [0, 255], got"
                       f" [{x.min()}, {x.max()}].")
    x = x.astype(np.uint8)
  return x


def as_caption(x, where: str) -> str:
  if isinstance(x, np.ndarray) and x.ndim > 0 or isinstance(x, (list, tuple)):
    if len(x) == 0:
      raise ValueError(f"{where}: no caption.")
    x = x[0]  # The first of several captions (see TFDS_FEATURES).
  if isinstance(x, np.ndarray):
    x = x.item()
  if isinstance(x, bytes):
    x = x.decode("utf-8")
  if not isinstance(x, str):
    raise ValueError(f"{where}: caption must be text, got {type(x).__name__}.")
  return x


def as_label(x, where: str) -> np.int32:
  x = np.asarray(x)
  if x.ndim != 0 or not np.issubdtype(x.dtype, np.integer):
    raise ValueError(f"{where}: a label must be one integer, got {x.dtype} of shape {x.shape}.")
  return np.int32(x)


def reduce_zero_label(semseg: np.ndarray) -> np.ndarray:
  """Class 0 -> 255 (unlabelled), class k -> k - 1 (uint8)."""
  semseg = np.asarray(semseg, np.uint8)
  return np.where(semseg == 0, np.uint8(255), semseg - np.uint8(1)).astype(np.uint8)


CONVERT = {"rgb": as_rgb, "depth": as_depth, "semseg": as_semseg, "caption": as_caption}
LABELS = "labels/"  # Prefix of m4 keys that read integer labels into `labels`.


# ---------------------------------------------------------------------------
# TFDS.


class TfdsSource:
  """A TFDS split through `tfds.data_source`, with features renamed to m4 keys."""

  def __init__(self, name: str, split: str, *, data_dir: str | None = None,
               features: Mapping[str, str] | None = None,
               semseg_reduce_zero: bool | None = None):
    # Heavy (TensorFlow); only TFDS sources need it.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if not name:
      raise ConfigError("config.data.name: a TFDS dataset name is required for kind 'tfds'.")
    base = name.split(":")[0].split("/")[0]
    if features is None:
      if base not in TFDS_FEATURES:
        raise ConfigError(
            f"config.data.tfds_features: no shipped mapping for TFDS dataset {name!r}"
            f" (shipped: {sorted(TFDS_FEATURES)}); give one, e.g. {{'rgb': 'image'}}.")
      features = TFDS_FEATURES[base]
    unknown = {k for k in features if k not in CONVERT and not (
        k.startswith(LABELS) and len(k) > len(LABELS) and "/" not in k[len(LABELS):])}
    if unknown:
      raise ConfigError(f"config.data.tfds_features: unknown m4 keys {sorted(unknown)};"
                        f" known: {sorted(CONVERT)} and {LABELS}NAME.")
    self.name, self.split, self.features = name, split, dict(features)
    self.semseg_reduce_zero = (base in TFDS_SEMSEG_REDUCE_ZERO if semseg_reduce_zero is None
                               else bool(semseg_reduce_zero))
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(
          f"config.data.name={name!r}: cannot open split {split!r} in data_dir"
          f" {data_dir or '(TFDS default)'}: {str(e).splitlines()[0] if str(e) else e!r}."
          f" Prepare it once with: tfds build {name} --file_format=array_record"
          + (f" --data_dir={data_dir}" if data_dir else "")) from e

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    record = self.source[index]
    out = {}
    for key, path in self.features.items():
      value = record
      for part in path.split("/"):
        if not isinstance(value, Mapping) or part not in value:
          raise KeyError(f"TFDS {self.name}[{self.split}][{index}]: no feature {path!r}"
                         f" (config.data.tfds_features.{key}).")
        value = value[part]
      where = f"TFDS {self.name}[{self.split}][{index}].{path}"
      if key.startswith(LABELS):
        out.setdefault("labels", {})[key[len(LABELS):]] = as_label(value, where)
        continue
      if key == "semseg" and np.ndim(value) == 3 and np.shape(value)[-1] == 3:
        value = np.asarray(value)[..., 0]
      out[key] = CONVERT[key](value, where)
      if key == "semseg" and self.semseg_reduce_zero:
        out[key] = reduce_zero_label(out[key])
    out["id"] = np.int64(index)
    return out

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, {self.split!r})"


# ---------------------------------------------------------------------------
# Aligned folders.


class FolderError(DataError):
  """A sample of a folder dataset is missing, unreadable or misaligned."""


class FolderSource:
  """Aligned files `root/<modality>/<sample_id>.<ext>`, one file per modality.

  Files: rgb png/jpg (converted to RGB); depth 16-bit png, metres =
  value / `depth_png_scale` (1000: millimetres; 0 = invalid), or npy float
  metres (H, W); semseg single-channel png (mode L or P) of class ids, 255 =
  unlabelled; caption utf-8 txt. Sample ids sort as strings.

  Listing happens at construction: an id present in one modality and missing
  in another, two files for one id, a file with an unknown extension, or a
  symlink that leads out of `dataset_root` (default: `root`) is a FolderError
  naming the path; a folder without samples is a ConfigError. Reading checks
  every image file (`m4.data.image_files`: garbage in a JPEG's data, a PNG's
  CRCs), decodes it, and checks that the images agree in size and, with
  `min_size` (h, w), are not smaller; failures name the file. With
  `on_error="skip"` such samples are left out instead (reads then return
  None, which the pipeline drops) and counted: `skipped` maps each bad file
  to its reason (logged once; a file read again in a later epoch counts once).
  """

  def __init__(self, root: str, *, modalities: Sequence[str] | None = None,
               on_error: str = "raise", depth_png_scale: float = 1000.0,
               dataset_root: str | None = None, min_size: Sequence[int] | None = None):
    if on_error not in ON_ERROR:
      raise ConfigError(f"config.data.on_error: {on_error!r} is not one of {ON_ERROR}.")
    if not os.path.isdir(root):
      raise ConfigError(f"config.data.dir: no folder dataset at {root!r}"
                        " (expected <dir>/<split>/<modality>/<sample_id>.<ext>).")
    if modalities is None:
      modalities = [m for m in FOLDER_EXTENSIONS if os.path.isdir(os.path.join(root, m))]
      if not modalities:
        raise ConfigError(f"config.data.dir: {root!r} holds none of the modality folders"
                          f" {sorted(FOLDER_EXTENSIONS)}.")
    for m in modalities:
      if m not in FOLDER_EXTENSIONS:
        raise ConfigError(f"config.data.modalities: {m!r} cannot be read from folders;"
                          f" known: {sorted(FOLDER_EXTENSIONS)}.")
      if not os.path.isdir(os.path.join(root, m)):
        raise ConfigError(f"config.data.modalities: no folder {os.path.join(root, m)!r}.")
    self.root, self.modalities = root, tuple(modalities)
    self.on_error, self.depth_png_scale = on_error, float(depth_png_scale)
    self.inside = os.path.realpath(dataset_root or root)
    self.min_size = None if min_size is None else tuple(int(s) for s in min_size)
    self.skipped: dict[str, str] = {}
    self._lock = threading.Lock()
    self.files = self._list()  # [{modality: path}], one per sample, sorted by id.
    if not self.files:
      raise ConfigError(f"config.data.dir: {root!r} holds no samples"
                        + (f" ({len(self.skipped)} bad files skipped)" if self.skipped else "")
                        + f" (expected {root}/<modality>/<sample_id>.<ext>).")

  def _fail(self, path: str, reason: str):
    if self.on_error == "raise":
      raise FolderError(f"{path}: {reason}")
    with self._lock:
      if path not in self.skipped:
        self.skipped[path] = reason
        logging.warning("folder source: skipping %s: %s", path, reason)

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  def _list(self) -> list[dict[str, str]]:
    by_id = collections.defaultdict(dict)
    for m in self.modalities:
      folder = os.path.join(self.root, m)
      for name in sorted(os.listdir(folder)):
        if name.startswith("."):
          continue
        path = os.path.join(folder, name)
        stem, ext = os.path.splitext(name)
        outside = self._outside(path)
        if outside:
          self._fail(path, outside)
          by_id[stem][m] = None  # The sample is left out, this file named.
          continue
        if ext.lower() not in FOLDER_EXTENSIONS[m]:
          self._fail(path, f"unknown extension for {m}; expected one of {FOLDER_EXTENSIONS[m]}.")
          continue
        if m in by_id[stem]:
          self._fail(path, f"a second {m} file for sample {stem!r} (first: {by_id[stem][m]}).")
          by_id[stem][m] = None  # Neither file can be trusted.
          continue
        by_id[stem][m] = path
    files = []
    for stem in sorted(by_id):
      entry = by_id[stem]
      missing = [m for m in self.modalities if m not in entry]
      if missing or any(p is None for p in entry.values()):
        if missing:
          have = next(p for p in entry.values() if p)
          exts = "|".join(e.lstrip(".") for e in FOLDER_EXTENSIONS[missing[0]])
          self._fail(os.path.join(self.root, missing[0], f"{stem}.{{{exts}}}"),
                     f"missing: sample {stem!r} has {have} but no {missing[0]} file.")
        continue
      files.append(entry)
    return files

  def __len__(self) -> int:
    return len(self.files)

  def _outside(self, path: str) -> str | None:
    """Why `path` may not be read (it resolves outside the dataset), or None."""
    real = os.path.realpath(path)
    if os.path.commonpath([real, self.inside]) != self.inside:
      return f"a symlink to {real}, outside the dataset root {self.inside}; not read."
    return None

  def _read(self, modality: str, path: str):
    outside = self._outside(path)  # Again: the file may have changed since listing.
    if outside:
      raise ValueError(outside)
    if modality == "caption":
      with open(path, encoding="utf-8") as f:
        return f.read().strip()
    if modality == "depth" and path.endswith(".npy"):
      return as_depth(np.load(path, allow_pickle=False), path)
    with open(path, "rb") as f:
      data = f.read()
    image_files.check(path, data)
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      if modality == "rgb":
        return as_rgb(np.asarray(im.convert("RGB")), path)
      if modality == "depth":
        if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
          raise ValueError(f"depth PNGs must be 16-bit (mode I;16), got mode {im.mode}.")
        return as_depth(np.asarray(im), path, self.depth_png_scale)
      if im.mode not in ("L", "P"):
        raise ValueError(f"semseg PNGs hold class ids in one channel (mode L or P),"
                         f" got mode {im.mode}.")
      return as_semseg(np.asarray(im), path)

  def __getitem__(self, index: int) -> dict | None:
    entry = self.files[index]
    sample = {}
    for m, path in entry.items():
      try:
        sample[m] = self._read(m, path)
      except (OSError, ValueError, UnicodeDecodeError, SyntaxError) as e:
        self._fail(path, f"cannot read {m}: {e}")
        return None
    sizes = {entry[m]: sample[m].shape[:2] for m in sample if m != "caption"}
    if len(set(sizes.values())) > 1:
      self._fail(entry[self.modalities[0]],
                 "image sizes differ: " + ", ".join(f"{p} {s}" for p, s in sizes.items()))
      return None
    small = [p for p, s in sizes.items() if self.min_size and (
        s[0] < self.min_size[0] or s[1] < self.min_size[1])]
    if small:
      self._fail(small[0], f"{tuple(sizes[small[0]])} pixels is smaller than config.data."
                 f"image_size {self.min_size}; set config.data.upscale=True to upscale it.")
      return None
    sample["id"] = np.int64(index)
    return sample

  def __repr__(self) -> str:
    return f"FolderSource({self.root!r}, {self.modalities})"

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_lock")
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()
