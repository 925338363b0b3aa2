"""The scenes dataset: determinism, alignment, captions, labels, storage, grid."""

import hashlib
import os
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from m4 import pictures
from m4 import workdir
from m4.data import record_files
from m4.data import scenes
from m4.data import transforms
from m4.tools import grid

RES = 48
ARGS = dict(seed=3, resolution=RES, min_objects=1, max_objects=4)
SMALL = dict(resolution=32, num_train=12, num_validation=5, num_test=5, seed=1)


def _equal(a, b) -> bool:
  """Same structure, types, dtypes and bits."""
  if isinstance(a, dict):
    return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
  if type(a) is not type(b):
    return False
  if isinstance(a, (np.ndarray, np.generic)):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
  return a == b


@pytest.fixture(scope="module")
def samples():
  return [scenes.render(i, split="validation", **ARGS) for i in range(24)]


def _ground_depth(sample) -> np.ndarray:
  """z-depth of the ground plane per row, from the stored camera (inf: none)."""
  s = sample["scene"]
  res = sample["depth"].shape[0]
  right, up, forward = s["camera_rotation"].astype(np.float64)
  tan = res / 2 / float(s["focal_px"])
  y = -((np.arange(res) + 0.5) / res * 2 - 1) * tan
  dy = forward[1] + y * up[1]  # right[1] is 0: the camera does not roll.
  t = -float(s["camera_position"][1]) / dy
  return np.where((dy < 0) & (t <= scenes.GROUND_FAR), t, np.inf)


def test_render_is_deterministic():
  a = scenes.render(7, split="train", **ARGS)
  assert _equal(a, scenes.render(7, split="train", **ARGS))
  assert not np.array_equal(a["rgb"], scenes.render(7, split="train", **{**ARGS, "seed": 4})["rgb"])
  assert not np.array_equal(a["rgb"], scenes.render(8, split="train", **ARGS)["rgb"])


def test_contract(samples):
  for s in samples:
    assert s["rgb"].shape == (RES, RES, 3) and s["rgb"].dtype == np.uint8
    assert s["depth"].shape == (RES, RES) and s["depth"].dtype == np.float32
    assert s["semseg"].shape == (RES, RES) and s["semseg"].dtype == np.uint8
    assert np.all(np.isfinite(s["depth"])) and np.all(s["depth"] >= 0)
    assert s["depth"].max() <= scenes.GROUND_FAR
    assert np.all((s["depth"] == 0) == (s["semseg"] == scenes.SKY))
    assert s["semseg"].max() < len(scenes.CLASSES)
    assert s["id"].dtype == np.int64
    n = int(s["labels"]["count"])
    assert s["labels"]["count"].dtype == np.int32 and 1 <= n <= 4
    for key in ("shape", "color", "size", "center_px", "area_px", "bbox_px"):
      arr = s["scene"][key]
      assert arr.shape[0] == 4, key
      assert np.all(arr[n:] == -1) and np.all(arr[:n] >= 0), key
    assert s["scene"]["center_px"].dtype == np.float32


def test_semseg_depth_and_scene_graph_align(samples):
  for s in samples:
    n = int(s["labels"]["count"])
    sc, sem, depth = s["scene"], s["semseg"], s["depth"]
    for k in range(n):
      x, y = np.floor(sc["center_px"][k]).astype(int)
      assert sem[y, x] == scenes.FIRST_OBJECT_CLASS + sc["shape"][k]
      # The surface at the centre pixel is in front of the object's centre.
      assert sc["depth_m"][k] - 2.5 * sc["radius"][k] < depth[y, x] < sc["depth_m"][k] + 0.05
      x0, y0, x1, y1 = sc["bbox_px"][k]
      assert x0 <= x < x1 and y0 <= y < y1
    # Visible areas add up to each object class's pixels.
    for shape in range(len(scenes.SHAPES)):
      mine = sc["shape"][:n] == shape
      assert sc["area_px"][:n][mine].sum() == np.sum(sem == scenes.FIRST_OBJECT_CLASS + shape)
    # Every ground pixel has exactly the ground plane's depth; every object
    # pixel is in front of the ground behind it: no holes or speckles at edges.
    ground = np.broadcast_to(_ground_depth(s)[:, None], depth.shape)
    on_ground = sem == scenes.GROUND
    np.testing.assert_allclose(depth[on_ground], ground[on_ground], rtol=1e-4)
    objects = sem >= scenes.FIRST_OBJECT_CLASS
    assert np.all(depth[objects] > 0) and np.all(depth[objects] <= ground[objects] * (1 + 1e-4))


def test_ground_depth_grows_up_the_image(samples):
  for s in samples:
    for col in range(RES):
      rows = np.nonzero(s["semseg"][:, col] == scenes.GROUND)[0][::-1]  # Bottom up.
      assert len(rows) > 0
      assert s["semseg"][-1, col] != scenes.SKY  # Ground or an object at the bottom.
      assert np.all(np.diff(s["depth"][rows, col]) > 0)


def test_shadows_fall_on_the_ground(samples):
  with_shadow = 0
  for s in samples:
    lum = s["rgb"].astype(np.float32).mean(-1)
    ground = s["semseg"] == scenes.GROUND
    row_max = np.where(ground, lum, 0).max(axis=1, keepdims=True)
    with_shadow += np.any(ground & (lum < 0.8 * row_max))
  assert with_shadow >= 0.8 * len(samples)


_OBJECT = re.compile(r"a (%s) (%s) (%s)" % ("|".join(scenes.SIZES), "|".join(scenes.COLORS),
                                            "|".join(scenes.SHAPES)))


def test_caption_names_every_object_left_to_right(samples):
  for s in samples:
    n = int(s["labels"]["count"])
    sc = s["scene"]
    named = [(scenes.SIZES.index(a), scenes.COLORS.index(b), scenes.SHAPES.index(c))
             for a, b, c in _OBJECT.findall(s["caption"])]
    assert named == list(zip(sc["size"][:n], sc["color"][:n], sc["shape"][:n])), s["caption"]
    assert scenes.parse_caption(s["caption"]) == named
    assert np.all(np.diff(sc["center_px"][:n, 0]) >= 0)
    relations = _OBJECT.split(s["caption"])[4:-1:4]  # The text between objects.
    assert len(relations) == n - 1
    for k, rel in enumerate(relations):
      rel = rel.strip()
      if sc["center_px"][k + 1, 0] - sc["center_px"][k, 0] >= scenes.LEFT_OF_FRACTION * RES:
        assert rel == "left of"
      else:
        assert rel == ("in front of" if sc["depth_m"][k] < sc["depth_m"][k + 1] else "behind")
  assert scenes.parse_caption("A red cube and two small blue spheres") == [(-1, 0, 1), (0, 5, 0)]
  # The longest caption fits the caption modality (48 tokens incl. [SOS]/[EOS]).
  words = scenes.render(0, resolution=32, min_objects=scenes.MAX_OBJECTS_LIMIT,
                        max_objects=scenes.MAX_OBJECTS_LIMIT)["caption"].split()
  assert len(words) <= 7 * scenes.MAX_OBJECTS_LIMIT - 3 <= 46


def test_labels_agree_with_scene_graph(samples):
  counts = set()
  for s in samples:
    n = int(s["labels"]["count"])
    size = s["scene"]["size"][:n]
    assert np.sum(s["scene"]["shape"] >= 0) == n
    big = np.flatnonzero(size == size.max())
    assert len(big) == 1  # The largest object is unique.
    assert s["labels"]["largest_shape"] == s["scene"]["shape"][big[0]]
    counts.add(n)
  assert counts == {1, 2, 3, 4}


def test_splits_never_overlap():
  hashes = {}
  for split in scenes.SPLITS:
    for i in range(12):
      rgb = scenes.render(i, split=split, seed=0, resolution=24)["rgb"]
      hashes.setdefault(hashlib.sha1(rgb.tobytes()).hexdigest(), []).append((split, i))
  assert all(len(v) == 1 for v in hashes.values())


def test_bad_parameters_are_named():
  with pytest.raises(ValueError, match="max_objects"):
    scenes.render(0, max_objects=9)
  with pytest.raises(ValueError, match="split"):
    scenes.render(0, split="val")
  with pytest.raises(workdir.ConfigError, match="config.data: .*resolution"):
    scenes.ensure("/nonexistent/never", {"resolution": 4})


def _fingerprint(d):
  return {name: (os.stat(os.path.join(d, name)).st_mtime_ns,
                 hashlib.sha1(open(os.path.join(d, name), "rb").read()).hexdigest())
          for name in sorted(os.listdir(d))}


def test_ensure_writes_reuses_refuses_and_resumes(tmp_path):
  d = str(tmp_path / "data")
  assert scenes.ensure(d, {**SMALL, "workers": 2}, progress=False) == d
  spec = scenes.read_spec(d)
  # Stored samples equal the in-memory renderer's, bit for bit (2 workers wrote them).
  for split in scenes.SPLITS:
    source = scenes.ScenesSource(d, split)
    assert len(source) == spec.num(split)
    for i in (0, len(source) - 1):
      assert _equal(source[i], scenes.render(i, split=split, **spec.render_args()))
  assert _equal(pickle.loads(pickle.dumps(source))[1], source[1])  # For grain workers.

  before = _fingerprint(d)
  scenes.ensure(d, SMALL, progress=False)  # Same parameters: reused.
  scenes.ensure(d, {"dir": d}, progress=False)  # Parameters left out: whatever is there.
  assert _fingerprint(d) == before
  for field, value in (("max_objects", 3), ("num_train", 13), ("seed", 2)):
    with pytest.raises(workdir.ConfigError, match=f"{re.escape(d)}.*{field}"):
      scenes.ensure(d, {**SMALL, field: value}, progress=False)
  assert _fingerprint(d) == before

  # An interrupted run: one split missing, a dead writer's temp file left.
  test_file = scenes.split_path(d, "test")
  os.remove(test_file)
  stale = record_files.partial_prefix(test_file) + "999999999"
  open(stale, "wb").write(b"half")
  stats = {}
  scenes.ensure(d, SMALL, progress=False, stats=stats)
  assert list(stats) == ["test"] and not os.path.exists(stale)
  after = _fingerprint(d)
  assert after["train.array_record"] == before["train.array_record"]
  assert after["test.array_record"][1] == before["test.array_record"][1]  # Same bytes.


def test_ensure_refuses_foreign_directory(tmp_path):
  d = tmp_path / "other"
  d.mkdir()
  (d / "train.array_record").write_bytes(b"not ours")
  with pytest.raises(workdir.ConfigError, match="no spec.json"):
    scenes.ensure(str(d), SMALL, progress=False)
  assert (d / "train.array_record").read_bytes() == b"not ours"
  assert sorted(os.listdir(d)) == ["train.array_record"]
  with pytest.raises(FileNotFoundError, match="spec.json"):
    scenes.ScenesSource(str(d), "train")
  # A dataset an older renderer made is refused, not reused.
  old = tmp_path / "old"
  old.mkdir()
  spec = {**scenes.SceneSpec(**SMALL).to_json(), "renderer_version": scenes.RENDERER_VERSION - 1}
  workdir.write_json(str(old / "spec.json"), spec)
  with pytest.raises(workdir.ConfigError, match="renderer_version"):
    scenes.ensure(str(old), SMALL, progress=False)
  assert sorted(os.listdir(old)) == ["spec.json"]


def test_grid_draws_cells_where_expected(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
  semseg = np.arange(32 * 32).reshape(32, 32) % 6
  depth = np.linspace(1, 10, 32 * 32).reshape(32, 32).astype(np.float32)
  depth[0] = 0
  rows = [{"rgb": rgb, "depth": depth, "semseg": semseg},
          {"rgb": rgb.astype(np.float32) / 255, "semseg": semseg,
           "tok": np.arange(16).reshape(4, 4)}]
  path = pictures.save_grid(str(tmp_path / "g.png"), rows, ["a caption", "another"], cell_size=64)
  img = np.asarray(Image.open(path).convert("RGB"))
  pad, title_h = 4, 12 + 4 + 4  # As make_grid lays out a 12 pt font.
  assert img.shape[1] == 4 * (64 + pad) + pad
  np.testing.assert_array_equal(img[title_h:title_h + 64, pad:pad + 64],
                                np.repeat(np.repeat(rgb, 2, 0), 2, 1))
  x = pad + 2 * (64 + pad)  # The semseg column through the fixed palette.
  np.testing.assert_array_equal(img[title_h:title_h + 64:2, x:x + 64:2],
                                pictures.SEMSEG_PALETTE[semseg])
  x = pad + 64 + pad  # Depth: invalid row black, near brighter than far.
  assert np.all(img[title_h:title_h + 2, x:x + 64] == 0)
  assert img[title_h + 2, x].sum() > img[title_h + 63, x + 63].sum()


def test_grid_command_and_trainer(tmp_path):
  from m4.jobs import scenes as scenes_trainer  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(dict(
      job="scenes", data=dict(kind="scenes", dir=str(tmp_path / "data"), workers=1, **SMALL),
      grid_split="validation", grid_rows=4, benchmark_samples=3))
  summary = scenes_trainer.run(config, str(tmp_path / "job"))
  assert summary["samples"] == {"train": 12, "validation": 5, "test": 5}
  assert summary["generated"]["samples"] == 22 and summary["render_samples_per_sec_1core"] > 0
  assert Image.open(summary["grid"]).size[0] == 3 * (128 + 4) + 4
  again = scenes_trainer.run(config, str(tmp_path / "job"))
  assert again["generated"] == "reused an existing dataset"

  out = str(tmp_path / "cli.png")
  assert grid.main(["--data", str(tmp_path / "data"), "--split", "test", "--num", "8",
                    "--out", out]) == 0
  w, h = Image.open(out).size
  assert w == 3 * (128 + 4) + 4 and h > 5 * 128  # All 5 test samples, 128 px cells.
  assert grid.main(["--data", str(tmp_path / "none"), "--out", out]) == 2


def test_killed_writer_leaves_no_split_and_ensure_finishes(tmp_path):
  import glob  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  d = str(tmp_path / "data")
  args = dict(resolution=24, num_train=3000, num_validation=2, num_test=2)  # As below.
  proc = subprocess.Popen(
      [sys.executable, "-m", "m4.data.scenes", "--out", d, "--num", "3000",
       "--num_validation", "2", "--num_test", "2", "--resolution", "24"],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while not glob.glob(os.path.join(d, ".train.array_record.partial.*")):
      assert proc.poll() is None and time.time() < deadline, "the writer never started"
      time.sleep(0.05)
    time.sleep(0.3)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert not os.path.exists(scenes.split_path(d, "train"))  # No half split.
  with pytest.raises(FileNotFoundError, match="incomplete"):
    scenes.ScenesSource(d, "train")
  # Other parameters are refused; the same ones finish the job (here only the
  # small splits, to keep the test short).
  with pytest.raises(workdir.ConfigError, match="num_train"):
    scenes.ensure(d, {**args, "num_train": 30}, progress=False)
  scenes.ensure(d, args, splits=("validation", "test"), progress=False)
  assert not glob.glob(os.path.join(d, ".*partial*"))  # The dead writer's file is gone.
  source = scenes.ScenesSource(d, "validation")
  assert _equal(source[1], scenes.render(1, split="validation", seed=0, resolution=24))


# ------------------------------------------------------------ extras (issue 13)

EXTRA_ARGS = dict(seed=3, resolution=32, min_objects=1, max_objects=4, extras=scenes.EXTRAS)
EXTRA_KEYS = ("normals", "instance", "edges", "rgb_edges", "boxes", "palette", "metadata")
# sha1 of SMALL's spec.json as written before extras existed (commit 8ed0c54). The
# records were checked byte-identical there too, on one machine; float rendering
# may differ across CPUs, so the test compares renders with and without extras.
SMALL_SPEC_SHA1 = "0c8e090305ba62cfdc077be7c1167fbffa0b5b49"


@pytest.fixture(scope="module")
def extra_samples():
  return [scenes.render(i, split="validation", **EXTRA_ARGS) for i in range(12)]


def _pair_differs(x):
  """(H, W) bool: pixels with a 4-neighbour of another value."""
  out = np.zeros(x.shape, bool)
  h, v = x[:, 1:] != x[:, :-1], x[1:] != x[:-1]
  out[:, 1:] |= h
  out[:, :-1] |= h
  out[1:] |= v
  out[:-1] |= v
  return out


def test_default_dataset_unchanged_by_extras(tmp_path):
  spec = scenes.SceneSpec(**SMALL)
  assert spec.extras == () and "extras" not in spec.to_json()
  assert scenes.default_config().extras == ()
  workdir.write_json(str(tmp_path / "spec.json"), spec.to_json())
  assert hashlib.sha1((tmp_path / "spec.json").read_bytes()).hexdigest() == SMALL_SPEC_SHA1
  # Extras add keys and change nothing else.
  plain = scenes.render(1, split="train", **{**EXTRA_ARGS, "extras": ()})
  full = scenes.render(1, split="train", **EXTRA_ARGS)
  assert set(full) - set(plain) == set(EXTRA_KEYS)
  assert _equal(plain, {k: v for k, v in full.items() if k in plain})
  assert _equal(full, scenes.render(1, split="train", **EXTRA_ARGS))  # Deterministic.
  assert scenes.SceneSpec(extras=["metadata", "normals"]).extras == ("normals", "metadata")
  with pytest.raises(ValueError, match="unknown extras"):
    scenes.SceneSpec(extras=("normal",))


def test_extras_contract(extra_samples):
  for s in extra_samples:
    n = int(s["labels"]["count"])
    assert s["normals"].shape == (32, 32, 3) and s["normals"].dtype == np.float32
    for key in ("instance", "edges", "rgb_edges"):
      assert s[key].shape == (32, 32) and s[key].dtype == np.uint8, key
    assert set(np.unique(s["edges"])) <= {0, 1} and set(np.unique(s["rgb_edges"])) <= {0, 1}
    assert 0 < s["rgb_edges"].mean() < 0.5
    assert s["boxes"]["class"].shape == (4,) and s["boxes"]["bbox_px"].shape == (4, 4)
    np.testing.assert_array_equal(s["boxes"]["bbox_px"], s["scene"]["bbox_px"])
    np.testing.assert_array_equal(s["boxes"]["class"][:n],
                                  scenes.FIRST_OBJECT_CLASS + s["scene"]["shape"][:n])
    assert np.all(s["boxes"]["class"][n:] == -1)


def test_normals_unit_ground_up_sphere_faces_camera(extra_samples):
  spheres = 0
  for s in extra_samples:
    normals, sem, sc = s["normals"], s["semseg"], s["scene"]
    sky = sem == scenes.SKY
    assert np.all(normals[sky] == 0)
    np.testing.assert_allclose(np.linalg.norm(normals[~sky], axis=-1), 1, atol=1e-5)
    up = sc["camera_rotation"][:, 1]  # World +y in camera axes (right, up, forward).
    np.testing.assert_allclose(normals[sem == scenes.GROUND], np.broadcast_to(
        up, normals[sem == scenes.GROUND].shape), atol=1e-5)
    tan = 16 / float(sc["focal_px"])
    c = (np.arange(32) + 0.5) / 16 - 1
    rays = np.stack(np.broadcast_arrays(c[None] * tan, -c[:, None] * tan, 1.0), -1)
    assert np.all(np.sum(normals * rays, -1)[~sky] < 1e-6)  # Surfaces face the camera.
    for k in np.flatnonzero(sc["shape"] == scenes.SHAPES.index("sphere")):
      x, y = np.floor(sc["center_px"][k]).astype(int)
      ray = np.array([(x + 0.5) / 16 - 1, 1 - (y + 0.5) / 16, 1 / tan])
      assert normals[y, x] @ (-ray / np.linalg.norm(ray)) > 0.8
      spheres += 1
  assert spheres >= 3


def test_instance_agrees_with_semseg_and_scene(extra_samples):
  for s in extra_samples:
    inst, sem, sc = s["instance"], s["semseg"], s["scene"]
    n = int(s["labels"]["count"])
    np.testing.assert_array_equal(inst == 0, sem == scenes.SKY)
    np.testing.assert_array_equal(inst == 1, sem == scenes.GROUND)
    assert inst.max() == n + 1
    for k in range(n):
      mine = inst == 2 + k
      assert np.all(sem[mine] == scenes.FIRST_OBJECT_CLASS + sc["shape"][k])
      assert mine.sum() == sc["area_px"][k]
      rows, cols = np.nonzero(mine)
      assert list(sc["bbox_px"][k]) == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_edges_cover_boundaries_and_creases_only(extra_samples):
  creases = 0
  for s in extra_samples:
    inst, edges = s["instance"], s["edges"].astype(bool)
    boundary = _pair_differs(inst)
    assert np.all(edges[boundary])
    # The ground plane is one flat surface: no depth jump or crease inside it.
    assert not np.any(edges[(inst == 1) & ~boundary])
    for k in np.flatnonzero(s["scene"]["shape"] == scenes.SHAPES.index("cube")):
      creases += np.sum(edges[(inst == 2 + k) & ~boundary])
  assert creases > 0  # A cube's visible edges.


def test_palette_and_metadata(extra_samples):
  for s in extra_samples:
    pal, meta, sc = s["palette"], s["metadata"], s["scene"]
    assert pal["colors"].shape == (4, 3) and pal["colors"].dtype == np.uint8
    assert pal["fraction"].dtype == np.float32 and np.all(np.diff(pal["fraction"]) <= 0)
    assert abs(pal["fraction"].sum() - 1) < 1e-5
    n = int(s["labels"]["count"])
    assert meta["count"] == n and meta["count"].dtype == np.int32
    assert meta["object_fraction"] == np.float32(sc["area_px"][:n].sum() / 32 ** 2)
    assert meta["camera_height_m"] == sc["camera_position"][1]
    assert 0 < meta["camera_pitch_deg"] < 27 and 0 < meta["brightness"] < 1
  two = np.zeros((8, 8, 3), np.uint8)
  two[:, :4] = (200, 10, 10)
  two[:, 4:6] = (10, 10, 200)
  two[:, 6:] = (10, 200, 10)
  pal = scenes.scene_extras.palette(two)
  assert [tuple(c) for c in pal["colors"][:3]] == [(200, 10, 10), (10, 10, 200), (10, 200, 10)]
  np.testing.assert_allclose(pal["fraction"], [0.5, 0.25, 0.25, 0.0])


def test_aligned_crop_moves_extras(extra_samples):
  s = extra_samples[0]
  crop = transforms.AlignedCrop(size=32, flip=True)
  seen = set()
  for seed in range(20):
    out = crop(s, np.random.default_rng(seed))
    flipped = not np.array_equal(out["semseg"], s["semseg"])
    seen.add(flipped)
    cols = slice(None, None, -1) if flipped else slice(None)
    for key in ("instance", "edges", "rgb_edges"):
      np.testing.assert_array_equal(out[key], s[key][:, cols])
      assert out[key].dtype == np.uint8
    sign = np.array([-1 if flipped else 1, 1, 1], np.float32)
    np.testing.assert_array_equal(out["normals"], s["normals"][:, cols] * sign)
    n = int(s["labels"]["count"])
    for k in range(n):
      rows, cc = np.nonzero(out["instance"] == 2 + k)
      np.testing.assert_array_equal(out["boxes"]["bbox_px"][k],
                                    [cc.min(), rows.min(), cc.max() + 1, rows.max() + 1])
  assert seen == {False, True}
  half = transforms.AlignedCrop(size=16, crop_scale=(0.5, 0.5), flip=True)(
      s, np.random.default_rng(0))
  assert all(half[k].shape[:2] == (16, 16) for k in ("normals", "instance", "edges", "rgb_edges"))


def test_extras_stay_aligned_through_the_training_pipeline(tmp_path):
  from m4.data import pipeline  # pylint: disable=g-import-not-at-top
  config = pipeline.data_config(
      kind="scenes", dir=str(tmp_path / "scenes"), resolution=32, num_train=16,
      num_validation=2, num_test=2, extras=scenes.EXTRAS, batch_size=8, image_size=(24, 24),
      crop_scale=(0.4, 1.0), flip=True)
  it = pipeline.make_iterator(config, config.train_split, seed=0, training=True)
  for _ in range(2):
    batch = next(it)
    assert batch["normals"].shape == (8, 24, 24, 3) and batch["instance"].shape == (8, 24, 24)
    sky = batch["semseg"] == scenes.SKY
    np.testing.assert_array_equal(batch["instance"] == 0, sky)
    np.testing.assert_array_equal(batch["instance"] == 1, batch["semseg"] == scenes.GROUND)
    np.testing.assert_array_equal(np.all(batch["normals"] == 0, -1), sky)
    assert batch["boxes"]["bbox_px"].shape == (8, 4, 4)
    assert batch["palette"]["colors"].shape == (8, 4, 3) and batch["metadata"]["count"].shape == (8,)


def test_ensure_with_extras_and_extras_grid(tmp_path):
  d = str(tmp_path / "data")
  config = dict(resolution=32, num_train=2, num_validation=1, num_test=1, seed=1,
                extras=("metadata", "instance"))
  scenes.ensure(d, config, progress=False)
  spec = scenes.read_spec(d)
  assert spec.extras == ("instance", "metadata")
  assert workdir.read_json(os.path.join(d, "spec.json"))["extras"] == ["instance", "metadata"]
  source = scenes.ScenesSource(d, "train")
  assert _equal(source[1], scenes.render(1, split="train", **spec.render_args()))
  assert "instance" in source[1] and "normals" not in source[1]
  scenes.ensure(d, {"dir": d}, progress=False)  # extras left out: whatever is stored.
  with pytest.raises(workdir.ConfigError, match="extras"):
    scenes.ensure(d, {**config, "extras": ()}, progress=False)
  path = scenes.extras_grid(str(tmp_path / "extras.png"), num=2, resolution=32)
  assert Image.open(path).size[0] == 6 * (128 + 4) + 4


def test_scene_texts_round_trip_through_wordpiece():
  """4M-21's sequence modalities: after a random crop, each sample's boxes,
  palette, metadata and instances text parse back to their quantised values,
  and a WordPiece tokenizer trained on such texts encodes and decodes them
  exactly."""
  from m4.data import scene_sequences  # pylint: disable=g-import-not-at-top
  from m4.tokenizers import text as text_lib  # pylint: disable=g-import-not-at-top
  crop = transforms.AlignedCrop((64, 64), crop_scale=(0.5, 1.0), flip=True)
  texts, samples = [], []
  for i in range(40):
    s = scenes.render(i, split="train", resolution=64, extras=scene_sequences.EXTRAS)
    s = scene_sequences.add_texts(crop.apply(s, np.random.default_rng(i)))
    for kind in scene_sequences.KINDS:
      text = s[f"{kind}_text"]
      value = s if kind == "instances" else s[kind]
      assert scene_sequences.from_text(kind, text) == scene_sequences.quantize(kind, value)
      texts.append(text)
    samples.append(s)
  for s in samples:  # The boxes as a map: each box's class inside it, ground outside all.
    regions = scene_sequences.regions("boxes", s["boxes_text"])
    inside = np.any([r for _, r in regions], 0) if regions else np.zeros((64, 64), bool)
    assert np.all(s["box_map"][~inside] == scenes.GROUND)
    smallest = min(regions, key=lambda cr: cr[1].sum(), default=None)
    if smallest is not None:
      assert np.all(s["box_map"][smallest[1]] == smallest[0])  # Drawn last, on top.
  q = scene_sequences.quantize("boxes", samples[0]["boxes"])
  bbox = np.asarray(samples[0]["boxes"]["bbox_px"])[np.asarray(samples[0]["boxes"]["class"]) >= 0]
  assert np.max(np.abs(np.asarray(q["bbox"]) - bbox)) <= 0.5  # 64 bins at 64 px: pixels.
  tok = text_lib.train(texts[:120], vocab_size=220)
  for text in texts:  # The held-out ones too.
    ids = tok.encode(text)
    assert text_lib.UNK not in [tok.tokenizer.id_to_token(i) for i in ids]
    assert tok.decode(ids) == text
  with pytest.raises(ValueError, match="cannot read metadata"):
    scene_sequences.from_text("metadata", "count 3 pitch")


def test_instances_text_is_boxes_plus_masks_of_the_instance_map():
  """instances: one group per visible object, its class the semseg's, its box
  the tight box of its pixels, its 4x4 mask cells close to its pixels (the
  quantisation's IoU, about 0.84); drawn, each mask lies in its class."""
  from m4.data import scene_sequences  # pylint: disable=g-import-not-at-top
  crop = transforms.AlignedCrop((48, 48), crop_scale=(0.4, 1.0), flip=True)
  ious = []
  for i in range(24):
    s = scenes.render(i, split="validation", resolution=64, extras=scene_sequences.EXTRAS)
    s = crop.apply(s, np.random.default_rng(i))
    s = scene_sequences.add_texts(s)
    ids = [k for k in np.unique(s["instance"]) if k >= 2]
    found = scene_sequences.regions("instances", s["instances_text"], (48, 48))
    assert len(found) == len(ids) and (ids or s["instances_text"] == "none")
    drawn = scene_sequences.picture("instances", s["instances_text"], (48, 48))
    for k, (c, region) in zip(ids, found):
      mask = s["instance"] == k
      assert c == np.bincount(s["semseg"][mask]).argmax()
      rows, cols = np.nonzero(mask)
      assert region[rows.min():rows.max() + 1, cols.min():cols.max() + 1].any()
      assert not region[:rows.min()].any() and not region[rows.max() + 1:].any()
      ious.append(np.sum(region & mask) / np.sum(region | mask))
      assert np.all(drawn[region & (drawn != 255)] >= scenes.CLASSES.index(scenes.SHAPES[0]))
  assert len(ious) > 30 and np.mean(ious) > 0.8 and np.min(ious) > 0.3
  with pytest.raises(ValueError, match="cannot read instances"):
    scene_sequences.from_text("instances", "cube 1 2 3 4 0110 1111 1111 0112")
  assert scene_sequences.from_text("instances", "none") == {"class": [], "bbox": [], "mask": []}
