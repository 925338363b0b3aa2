"""Aligned transforms and the grain pipeline: alignment, determinism, resume, shards."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m4 import checkpoints
from m4.data import pipeline
from m4 import value_scales
from m4.data import transforms
from m4.workdir import ConfigError

PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40],
                    [40, 220, 220], [90, 90, 90]], np.uint8)
BLOCK = 12


class AlignedSynthetic:
  """Samples whose modalities agree by construction.

  semseg is a random grid of BLOCK x BLOCK class blocks, rgb paints each
  class in its PALETTE colour, depth encodes the pixel's position
  (1 + row * W + col metres), and scene.center_px holds the block centres.
  """

  def __init__(self, n, height=48, width=72):
    self.n, self.height, self.width = n, height, width

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    rng = np.random.default_rng(i)
    gh, gw = self.height // BLOCK, self.width // BLOCK
    blocks = rng.integers(0, len(PALETTE), (gh, gw))
    semseg = np.kron(blocks, np.ones((BLOCK, BLOCK), np.int64)).astype(np.uint8)
    rows, cols = np.mgrid[:self.height, :self.width]
    depth = (1 + rows * self.width + cols).astype(np.float32)
    by, bx = np.mgrid[:gh, :gw]
    centres = np.stack([(bx + 0.5) * BLOCK, (by + 0.5) * BLOCK], -1).reshape(-1, 2)
    return {"rgb": PALETTE[semseg], "depth": depth, "semseg": semseg,
            "caption": f"sample {i}: a cube left of a sphere",
            "scene": {"center_px": centres.astype(np.float32),
                      "shape": blocks.reshape(-1).astype(np.int32)},
            "id": np.int64(i)}


def _check_aligned(src, out, size):
  """Every modality of `out` shows the same source pixels of `src`."""
  height, width = src["semseg"].shape
  idx = out["depth"].astype(np.int64) - 1
  r, c = idx // width, idx % width
  assert out["depth"].shape == out["semseg"].shape == out["rgb"].shape[:2] == size
  assert out["rgb"].dtype == out["depth"].dtype == np.float32
  assert out["semseg"].dtype == np.int32
  # The sampled source pixels form a crop grid, mirrored or not.
  assert (np.diff(r[:, 0]) >= 0).all() and (r == r[:, :1]).all()
  steps = np.diff(c[0])
  flipped = bool((steps <= 0).all() and (steps < 0).any())
  assert flipped or (steps >= 0).all()
  assert (c == c[:1]).all()
  # semseg: exactly the class of the source pixel under each output pixel.
  np.testing.assert_array_equal(out["semseg"], src["semseg"][r, c])
  # rgb: the class colour wherever the source is one class around that pixel.
  pad = 3  # > the widest bilinear support here (downscaling by < 2.5).
  padded = np.pad(src["semseg"].astype(np.int64), pad, mode="edge")
  win = np.stack([padded[pad + r + dy, pad + c + dx]
                  for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)])
  flat = (win == win[0]).all(0)
  assert flat.mean() > 0.2
  np.testing.assert_allclose(out["rgb"][flat], PALETTE[out["semseg"][flat]] / 255, atol=1.5 / 255)
  # Captions and scene points follow the flip and the crop.
  assert ("right" in out["caption"]) == flipped and ("left" in out["caption"]) != flipped
  pts = out["scene"]["center_px"]
  inside = (pts[:, 0] >= 0.5) & (pts[:, 0] < size[1] - 0.5) & (pts[:, 1] >= 0.5) & (
      pts[:, 1] < size[0] - 0.5)
  x, y = pts[inside, 0].astype(int), pts[inside, 1].astype(int)
  np.testing.assert_array_equal(out["semseg"][y, x], out["scene"]["shape"][inside])
  return flipped


def test_aligned_crop_keeps_modalities_aligned():
  src = AlignedSynthetic(40)
  crop = transforms.AlignedCrop((32, 40), crop_scale=(0.25, 1.0), crop_ratio=(0.6, 1.6), flip=True)
  flips = [_check_aligned(src[i], crop(src[i], np.random.default_rng(i)), (32, 40))
           for i in range(len(src))]
  assert 5 < sum(flips) < 35
  up = transforms.AlignedCrop((96, 144), crop_scale=(0.5, 1.0), flip=True)  # Upsampling.
  for i in range(5):
    _check_aligned(src[i], up(src[i], np.random.default_rng(i)), (96, 144))


def test_full_crop_is_identity_and_eval_crop_is_central():
  sample = AlignedSynthetic(1)[0]
  same = transforms.AlignedCrop((48, 72))(sample, None)
  np.testing.assert_array_equal(same["rgb"], sample["rgb"] / np.float32(255))
  np.testing.assert_array_equal(same["depth"], sample["depth"])
  np.testing.assert_array_equal(same["semseg"], sample["semseg"])
  central = transforms.AlignedCrop(24, random=False)(sample, np.random.default_rng(0))
  np.testing.assert_array_equal(central["semseg"], sample["semseg"][::2, 12:60:2])


def test_normalize_round_trip_numpy_and_jax():
  depth = np.array([[0.0, -1.0, np.nan, np.inf], [0.1, 1.0, 5.0, 100.0]], np.float32)
  for xp in (np, jnp):
    z = value_scales.normalize("depth", xp.asarray(depth))
    assert isinstance(z, jax.Array) == (xp is jnp)
    z = np.asarray(z)
    assert (z[0] == value_scales.DEPTH_INVALID).all() and (z[1] > value_scales.DEPTH_INVALID_BELOW).all()
    assert z[1, 2] == 0  # 5 m is the centre of the scale.
    back = np.asarray(value_scales.denormalize("depth", xp.asarray(z)))
    np.testing.assert_allclose(back, np.nan_to_num(np.maximum(depth, 0), posinf=0), rtol=1e-5)
    rgb = np.linspace(0, 1, 12, dtype=np.float32).reshape(2, 2, 3)
    x = value_scales.normalize("rgb", xp.asarray(rgb))
    assert float(x.min()) == -1 and float(x.max()) == 1
    np.testing.assert_allclose(np.asarray(value_scales.denormalize("rgb", x)), rgb, atol=1e-7)
  with pytest.raises(ValueError, match="'caption' has no value scale"):
    value_scales.normalize("caption", np.zeros(3))


def _config(**kw):
  base = dict(kind="folder", batch_size=8, image_size=(32, 32), crop_scale=(0.3, 1.0),
              crop_ratio=(0.75, 1.33), flip=True)
  return pipeline.data_config(**{**base, **kw})


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    jax.tree.map(np.testing.assert_array_equal, x, y)


def _iterator(src, seed=3, **kw):
  return pipeline.make_iterator(_config(**kw), "train", seed=seed, training=True, source=src)


def test_training_batches_are_deterministic_with_and_without_workers():
  """The same batches with 0 or 2 workers, made in the read threads or after
  them ("skip" reads: samples may drop), and a saved position counts samples,
  so each resumes from the others' (one worker pool, started once)."""
  src = AlignedSynthetic(20)
  ahead, pool, after = _iterator(src), _iterator(src, num_workers=2), _iterator(src, on_error="skip")
  assert pipeline.batches_ahead(_config()) and not pipeline.batches_ahead(_config(on_error="skip"))
  runs = [_take(it, 6) for it in (ahead, pool, after)]  # 48 samples: more than two epochs.
  _assert_batches_equal(runs[0], runs[1])
  _assert_batches_equal(runs[0], runs[2])
  assert ahead.get_state() == after.get_state() == {"next_index": 48}  # Samples, as grain's.
  assert pipeline.samples_in(pool.get_state()) == 48
  state = pool.get_state()  # The pool's saved state brings back the same batches ...
  expected = _take(pool, 2)
  pool.set_state(state)
  _assert_batches_equal(_take(pool, 2), expected)
  fresh = _iterator(src)  # ... and so does a fresh iterator with no workers,
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 2), expected)
  pool.set_state(after.get_state())  # and the other way round, from batches made after.
  _assert_batches_equal(_take(pool, 2), _take(after, 2))
  pool.close()
  batch = runs[0][0]
  assert batch["rgb"].shape == (8, 32, 32, 3) and batch["semseg"].shape == (8, 32, 32)
  ids = np.concatenate([b["id"] for b in runs[0]])
  assert sorted(ids[:20]) == list(range(20)) and sorted(ids[20:40]) == list(range(20))
  assert list(ids[:20]) != list(ids[20:40])  # Each epoch has its own order.
  for b in runs[0][:2]:
    for i in range(8):
      _check_aligned(src[int(b["id"][i])], jax.tree.map(lambda v, i=i: v[i], b), (32, 32))
  other = _take(_iterator(src, seed=4), 1)
  assert list(other[0]["id"]) != list(batch["id"])


def test_a_position_between_batches_resumes_at_the_next_batch(caplog):
  """Another batch size: the saved sample is not a whole batch; the run
  resumes at the next one and says so."""
  src = AlignedSynthetic(20)
  it = _iterator(src)
  _take(it, 3)  # Sample 24: not a whole batch of 16.
  state, expected = it.get_state(), _take(it, 4)  # Samples 24 .. 55.
  wider = _iterator(src, batch_size=16)
  with caplog.at_level("WARNING"):
    wider.set_state(state)
  assert "resuming at sample 32" in caplog.text
  got = _take(wider, 1)[0]
  np.testing.assert_array_equal(got["id"], np.concatenate([b["id"] for b in expected[1:3]]))
  with pytest.raises(ConfigError, match="data pipeline changed"):
    wider.set_state({"position": 3})


def test_iterator_state_round_trips_through_checkpointer(tmp_path):
  src = AlignedSynthetic(20)
  it = pipeline.make_iterator(_config(), "train", seed=0, training=True, source=src)
  _take(it, 3)
  with checkpoints.Checkpointer(str(tmp_path / "ck"), async_save=False) as ck:
    ck.save(3, {"step": jnp.int32(3)}, data_iter=it)
  expected = _take(it, 3)
  fresh = pipeline.make_iterator(_config(), "train", seed=0, training=True, source=src)
  with checkpoints.Checkpointer(str(tmp_path / "ck")) as ck:
    state, _ = ck.restore({"step": jnp.int32(0)}, data_iter=fresh)
  assert int(state["step"]) == 3
  _assert_batches_equal(_take(fresh, 3), expected)


def test_a_data_position_that_does_not_fit_is_refused_and_kept(tmp_path):
  """A saved data state this pipeline cannot resume is a ConfigError naming
  the checkpoint, not a damaged checkpoint: it is neither skipped nor moved."""
  it = pipeline.make_iterator(_config(), "train", seed=0, training=True,
                              source=AlignedSynthetic(20))
  _take(it, 2)
  with checkpoints.Checkpointer(str(tmp_path / "ck"), async_save=False) as ck:
    ck.save(2, {"step": jnp.int32(2)}, data_iter=it)
  (saved,) = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "ck" / "2")
              for f in files if f.endswith(".json") and "process" in f]
  with open(saved, "w") as f:
    json.dump({"position": 16}, f)  # E.g. written by another data pipeline.
  with checkpoints.Checkpointer(str(tmp_path / "ck")) as ck:
    with pytest.raises(ConfigError, match=r"ck/2.*data pipeline changed"):
      ck.restore_latest({"step": jnp.int32(0)}, data_iter=it)
    assert ck.all_steps() == [2]


def test_batches_made_after_the_read_resume_only_with_the_same_workers(tmp_path):
  """Where samples may be left out (on_error "skip"), grain's saved position
  holds for one number of workers: another number is refused, naming
  config.data.num_workers, and the checkpoint is kept; the same number resumes."""
  src = AlignedSynthetic(20)
  it = _iterator(src, on_error="skip")
  _take(it, 2)
  with checkpoints.Checkpointer(str(tmp_path / "ck"), async_save=False) as ck:
    ck.save(2, {"step": jnp.int32(2)}, data_iter=it)
  expected = _take(it, 2)
  pool = _iterator(src, on_error="skip", num_workers=2)
  with checkpoints.Checkpointer(str(tmp_path / "ck")) as ck:
    with pytest.raises(ConfigError, match=r"ck/2.*saved with 0 worker.*num_workers=0"):
      ck.restore_latest({"step": jnp.int32(0)}, data_iter=pool)
    assert ck.all_steps() == [2]
    pool.close()
    same = _iterator(src, on_error="skip")
    state, _, step = ck.restore_latest({"step": jnp.int32(0)}, data_iter=same)
  assert step == 2 and int(state["step"]) == 2
  _assert_batches_equal(_take(same, 2), expected)
  with pytest.raises(ConfigError, match="data pipeline changed"):
    same.set_state({"position": 3})
  assert pipeline.workers_in({"iterators_in_use_states": [{}, {}]}) == 2


def test_process_shards_are_disjoint_and_cover_the_split():
  src = AlignedSynthetic(12)
  # One process: 2 batches of 6 are one epoch.
  single = _take(pipeline.make_iterator(_config(batch_size=6), "train", seed=0, training=True,
                                        source=src), 2)
  firsts, evals = [], []
  for p in range(3):
    it = pipeline.make_iterator(_config(batch_size=6), "train", seed=0, training=True,
                                source=src, process_index=p, process_count=3)
    mine = _take(it, 2)
    firsts.append(np.concatenate([b["id"] for b in mine]))
    # Process p holds rows p, p + 3, ... of each one-process batch: the same
    # samples with the same crops, whatever the number of processes.
    for b, whole in zip(mine, single):
      np.testing.assert_array_equal(b["id"], whole["id"][p::3])
      np.testing.assert_array_equal(b["rgb"], whole["rgb"][p::3])
    batches = list(pipeline.make_dataset(_config(batch_size=6), "validation", seed=0,
                                         training=False, source=AlignedSynthetic(11),
                                         process_index=p, process_count=3))
    assert len(batches) == pipeline.num_eval_batches(_config(batch_size=6), 11, 3) == 2
    evals.append(np.concatenate([b["id"][b["valid"]] for b in batches]))
  assert sorted(np.concatenate(firsts)) == list(range(12))
  assert sorted(np.concatenate(evals)) == list(range(11))
  with pytest.raises(ConfigError, match="config.data.batch_size"):
    pipeline.make_dataset(_config(batch_size=8), "train", seed=0, training=True, source=src,
                          process_index=0, process_count=3)


def test_eval_pass_is_ordered_padded_and_central():
  src = AlignedSynthetic(19)
  config = _config(batch_size=8)
  batches = list(pipeline.make_dataset(config, "validation", seed=0, training=False, source=src))
  assert len(batches) == 3 and all(b["rgb"].shape == (8, 32, 32, 3) for b in batches)
  valid = np.concatenate([b["valid"] for b in batches])
  ids = np.concatenate([b["id"] for b in batches])
  assert valid.sum() == 19 and not valid[19:].any()
  assert list(ids[valid]) == list(range(19))
  central = transforms.AlignedCrop((32, 32), random=False)
  np.testing.assert_array_equal(batches[1]["depth"][2], central(src[10])["depth"])
  again = list(pipeline.make_dataset(config, "validation", seed=1, training=False, source=src))
  _assert_batches_equal(batches, again)


def test_caller_transforms_run_after_the_geometry_with_their_own_rng():
  import grain  # pylint: disable=g-import-not-at-top

  class Noise(grain.transforms.RandomMap):

    def random_map(self, element, rng):
      return dict(element, noise=rng.integers(0, 1 << 30))

  def shape_of(element):
    return dict(element, rgb_shape=np.array(element["rgb"].shape))

  kwargs = dict(seed=0, training=True, source=AlignedSynthetic(10), transforms=[shape_of, Noise()])
  a = next(pipeline.make_iterator(_config(), "train", **kwargs))
  b = next(pipeline.make_iterator(_config(), "train", **kwargs))
  assert (a["rgb_shape"] == [32, 32, 3]).all()
  np.testing.assert_array_equal(a["noise"], b["noise"])
  assert len(set(a["noise"].tolist())) == 8


def test_scenes_stay_aligned_through_the_training_pipeline(tmp_path):
  from m4.data import scenes  # pylint: disable=g-import-not-at-top
  config = pipeline.data_config(
      kind="scenes", dir=str(tmp_path / "scenes"), num_train=24, num_validation=4, num_test=4,
      batch_size=8, image_size=(48, 48), crop_scale=(0.4, 1.0), crop_ratio=(0.75, 1.33),
      flip=True)
  it = pipeline.make_iterator(config, config.train_split, seed=0, training=True)
  checked = flipped = 0
  for batch in _take(it, 4):
    assert batch["rgb"].shape == (8, 48, 48, 3)
    # Sky is exactly where depth is invalid, in every crop.
    np.testing.assert_array_equal(batch["semseg"] == scenes.CLASSES.index("sky"),
                                  batch["depth"] == 0)
    for i in range(8):
      scene = jax.tree.map(lambda v, i=i: v[i], batch["scene"])
      semseg = batch["semseg"][i]
      for k in range(int(batch["labels"]["count"][i])):
        x, y = scene["center_px"][k]
        if not (1 <= x < 47 and 1 <= y < 47):
          continue  # Cropped away.
        want = scenes.CLASSES.index(scenes.SHAPES[scene["shape"][k]])
        assert want in semseg[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2], (batch["id"][i], k)
        x0, y0, x1, y1 = scene["bbox_px"][k]
        assert x0 <= x <= x1 and y0 <= y <= y1
        checked += 1
      flipped += " right of " in batch["caption"][i]
  assert checked > 30 and flipped > 0
