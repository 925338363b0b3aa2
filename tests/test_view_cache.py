"""Training on cached views: the cache holds exactly what the loader feeds the encoder."""

import jax
import numpy as np
import pytest
from flax import nnx

from m4 import modalities
from m4.data import pipeline
from m4.data import scenes
from m4.data import subsets
from m4.data import transforms
from m4.jobs import view_cache
from m4.models import configs
from m4.models import transfer

PIXELS = "rgb_pixels@32probe"
PIXELS_SPEC = dict(kind="pixels", vocab_size=0, num_tokens=16, grid=(4, 4), roles=("input",),
                   tokenizer=None, data_key="rgb")


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("scenes32"))
  scenes.ensure(d, dict(resolution=32, min_objects=1, max_objects=3, seed=5, antialias=1,
                        num_train=40, num_validation=4, num_test=4), progress=False)
  return d


def _data(scenes_dir, **kw):
  data = pipeline.data_config(**{**dict(
      kind="scenes", dir=scenes_dir, image_size=(32, 32), crop_scale=(1.0, 1.0), flip=True,
      batch_size=8, modalities=("rgb", "semseg")), **kw})
  for field in ("resolution", "min_objects", "max_objects", "seed", "antialias", "num_train",
                "num_validation", "num_test", "extras"):
    data[field] = None  # What the dataset holds.
  return data


def _model():
  modalities.register_from_config({PIXELS: PIXELS_SPEC})
  cfg = configs.FourMConfig(encoder_modalities=(PIXELS,), decoder_modalities=("rgb",), dim=32,
                            encoder_depth=2, decoder_depth=1, num_heads=2, patch_size=8)
  task = transfer.TaskSpec.from_config("semseg", dict(
      kind="segmentation", inputs=(PIXELS,), target="semseg", num_classes=6))
  cfg = transfer.backbone_config(cfg, task.inputs)
  model = transfer.TransferModel(cfg, task, image_size=(32, 32),
                                 rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
  return model, task, transfer.EncoderInputs((PIXELS,))


def test_cached_views_are_exactly_what_the_loader_gives_the_encoder(scenes_dir):
  data = _data(scenes_dir)
  model, task, inputs = _model()
  source = subsets.LabelSubset(scenes.ScenesSource(scenes_dir, "train"), 0.5, seed=0)
  checked = []
  features = view_cache.build(view_cache.features_of(model, inputs, lambda x: x), task.targets,
                              data, source, seed=0, check=checked.append)
  batches = view_cache.build(inputs, task.targets, data, source, seed=0, check=checked.append)
  feats, _ = features.inputs
  pixels = batches.inputs[PIXELS]["tensor"]
  assert feats.shape == (20, 2, 16, 32) and features.targets.shape == (20, 2, 32, 32)
  assert pixels.shape == (20, 2, 32, 32, 3) and batches.inputs[PIXELS]["input_mask"].all()
  np.testing.assert_array_equal(batches.targets, features.targets)
  assert len(checked) == 2 and checked[0].shape == (40, 32, 32)
  position = {int(source.source[int(i)]["id"]): k for k, i in enumerate(source.indices)}
  # Six batches of the training loader (12 epochs' worth of flips would be the same test).
  it = pipeline.make_iterator(data, "train", seed=0, training=True, source=source)
  seen_views = set()
  for _ in range(6):
    batch = next(it)
    enc = inputs(batch)
    out, _ = jax.jit(lambda m, b: m.features(b))(model, enc)
    for row, sample_id in enumerate(batch["id"]):
      k = position[int(sample_id)]
      matches = [v for v in (0, 1)
                 if np.array_equal(features.targets[k, v], batch["semseg"][row])
                 and np.allclose(feats[k, v], out[row], atol=1e-5)
                 and np.array_equal(pixels[k, v], enc[PIXELS]["tensor"][row])]
      assert matches, f"sample {sample_id}: the loader's view is not in the cache"
      seen_views.update(matches)
  assert seen_views == {0, 1}  # Mirrored and not: the semseg maps tell them apart.
  # A batch drawn from the cache is its views at the draw.
  enc, targets = batches.batch(3)
  s, v = batches.draw(3)
  np.testing.assert_array_equal(enc[PIXELS]["tensor"], pixels[s, v])
  np.testing.assert_array_equal(targets, batches.targets[s, v])


def test_an_image_whose_training_crop_can_shift_has_no_finite_views():
  crop = transforms.AlignedCrop((32, 32), flip=True)
  square = {"id": 1, "rgb": np.zeros((40, 40, 3), np.uint8)}
  assert len(crop.views(square)) == 2
  assert len(transforms.AlignedCrop((32, 32)).views(square)) == 1  # No flip: one view.
  # 40 x 41: the full-area square fits with a column to spare, so the loader's crop moves.
  wide = {"id": 2, "rgb": np.zeros((40, 41, 3), np.uint8)}
  rng = np.random.default_rng(0)
  assert len({crop.crop_box(40, 41, rng)[1] for _ in range(50)}) == 2
  with pytest.raises(ValueError, match="may shift"):
    crop.views(wide)
  assert len(transforms.AlignedCrop((32, 32), flip=True).views(
      {"id": 3, "rgb": np.zeros((40, 60, 3), np.uint8)})) == 2  # Never fits: central only.


def test_draws_are_epochs_of_permutations_with_fair_flips_and_a_function_of_the_step():
  n, b = 10, 4
  make = lambda: view_cache.ViewCache(np.zeros((n, 2, 1, 1)), np.zeros((n, 2)), batch_size=b,
                                      seed=3)
  cache = make()
  draws = [cache.draw(step) for step in range(1, 51)]  # 200 draws: 20 epochs.
  samples = np.concatenate([s for s, _ in draws]).reshape(20, n)
  views = np.concatenate([v for _, v in draws])
  assert all(sorted(epoch) == list(range(n)) for epoch in samples)
  assert len({tuple(e) for e in samples}) > 15  # A new order each epoch.
  assert 0.35 < views.mean() < 0.65
  fresh = make()  # A resumed run: same step, same draw, no iterator state.
  for step in (37, 3, 50):
    np.testing.assert_array_equal(fresh.draw(step)[0], draws[step - 1][0])
    np.testing.assert_array_equal(fresh.draw(step)[1], draws[step - 1][1])
  unflipped = view_cache.ViewCache(np.zeros((n, 1, 1, 1)), np.zeros((n, 1)), batch_size=b,
                                   seed=3)
  assert not any(unflipped.draw(s)[1].any() for s in range(1, 20))


def test_random_crops_and_huge_caches_fall_back_to_the_loader(scenes_dir, monkeypatch):
  assert view_cache.uncached_reason(_data(scenes_dir)) == ""
  why = view_cache.uncached_reason(_data(scenes_dir, crop_scale=(0.5, 1.0)))
  assert "crop_scale" in why
  with pytest.raises(ValueError, match="crop is random"):
    pipeline.geometry(_data(scenes_dir, crop_scale=(0.5, 1.0)), training=True).views({})
  _, task, inputs = _model()
  source = subsets.LabelSubset(scenes.ScenesSource(scenes_dir, "train"), 0.5, seed=0)
  # 20 samples x 2 views x (32 x 32 x 3 float32 pixels + 32 x 32 targets) > 400 kB.
  monkeypatch.setattr(view_cache, "MAX_BYTES", 400_000)
  with pytest.raises(view_cache.Uncacheable, match="would not fit"):
    view_cache.build(inputs, task.targets, _data(scenes_dir), source, seed=0, check=print)
