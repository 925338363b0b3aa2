"""The transfer job end to end: the scenes table, the sweep, resuming, TFDS benchmarks on mock data."""

import json
import os

import numpy as np
import pytest

import m4  # pylint: disable=unused-import
from m4 import workdir
from m4.models import pretrained
from m4.models.fourm import FourM
from m4.jobs import transfer as trainer
from m4.jobs import transfer_protocols as protocols
from tests.transfer_setup import PIXELS, PIXELS_SPEC, SCENES, rngs, tiny_cfg, tiny_transfer_config


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
  from m4.data import scenes  # pylint: disable=g-import-not-at-top
  d = str(tmp_path_factory.mktemp("scenes32"))
  scenes.ensure(d, SCENES, progress=False)
  return d


def _scenes_config(data_dir, init_dir):
  c = tiny_transfer_config()
  c.init = init_dir
  c.modalities[PIXELS] = PIXELS_SPEC
  c.data.dir = data_dir
  c.data.image_size = (32, 32)
  c.data.batch_size = 16
  for name in list(c.tasks):
    if name != "semseg":
      del c.tasks[name]
  c.tasks.semseg.inputs = (PIXELS,)
  c.probe.update(dict(num_steps=40, warmup_steps=4, learning_rate=1e-2))
  c.finetune.update(dict(num_steps=8, warmup_steps=2))
  c.label_fractions = (0.5,)
  c.eval.num_samples = 0
  return c


def test_end_to_end_scenes_table_both_inits_and_protocols(tmp_path, scenes_dir):
  init_dir = str(tmp_path / "pretrained")
  pretrained.save(init_dir, FourM(tiny_cfg(), rngs=rngs(7)))
  c = _scenes_config(scenes_dir, init_dir)
  wd = tmp_path / "wd"
  summary = trainer.run(c, str(wd))

  table = (wd / "eval" / "results.md").read_text()
  header = next(l for l in table.splitlines() if l.startswith("| task"))
  assert "scratch" in header and "pretrained" in header and "Δ" in header
  rows = [l for l in table.splitlines() if l.startswith("| semseg |")]
  assert {r.split("|")[4].strip() for r in rows} == {"probe", "finetune"}
  assert all("50 % (60)" in r for r in rows), rows
  results = json.loads((wd / "eval" / "results.json").read_text())
  assert {(r["init"], r["protocol"]) for r in results} == {
      (i, p) for i in ("pretrained", "scratch") for p in ("probe", "finetune")}
  assert all(r["num_labels"] == 60 and r["metrics"]["num_samples"] == 32 for r in results)
  assert (wd / "eval" / "results.png").stat().st_size > 0
  assert (wd / "eval" / "semseg_50pct_predictions.png").stat().st_size > 0
  assert summary["runs"] == 4 and summary["results"].endswith("results.md")
  # Training shows progress and the test metrics land in the run's metrics.jsonl.
  rows = workdir.read_metrics(str(wd / "runs" / "semseg" / "scratch__probe__50pct__s0"))
  assert rows[0]["step"] == 3 and "loss" in rows[0] and "lr" in rows[0]
  assert "test/miou" in rows[-1]

  # A trained linear probe beats chance: sky and ground alone are easy to tell apart.
  probe = next(r for r in results if r["init"] == "scratch" and r["protocol"] == "probe")
  from m4.data import scenes  # pylint: disable=g-import-not-at-top
  src = scenes.ScenesSource(scenes_dir, "test")
  labels = np.concatenate([src[i]["semseg"].ravel() for i in range(len(src))])
  majority = np.bincount(labels).max() / labels.size
  assert probe["metrics"]["pixel_accuracy"] > majority + 0.1, (probe["metrics"], majority)
  assert probe["metrics"]["miou"] > 1.5 / 6
  # The crop is fixed up to a flip, so the probes trained on cached encoder features and
  # the fine-tunings on cached encoder batches.
  assert {(r["protocol"], r["train_inputs"]) for r in results} == {
      ("probe", "cached features"), ("finetune", "cached views")}

  # Running again skips every finished run; other settings are refused, not mixed in.
  first = wd / "eval" / f"{results[0]['run']}.json"
  mtime = first.stat().st_mtime
  trainer.run(c, str(wd))
  c.probe.learning_rate = 0.5
  with pytest.raises(workdir.ConfigError, match=r"made with other settings \(optimizer differ"):
    trainer.run(c, str(wd))
  assert first.stat().st_mtime == mtime


def test_sweep_picks_each_arms_rate_on_validation_and_the_convnet_is_an_arm(tmp_path, scenes_dir,
                                                                           monkeypatch):
  c = _scenes_config(scenes_dir, "")
  c.inits, c.protocols = ("scratch",), ("probe",)
  c.model = tiny_cfg().to_dict()
  c.sweep.learning_rates = dict(probe=(1e-4, 1e-2), finetune=(), supervised=(3e-3,))
  c.baselines = ("convnet",)
  c.supervised.update(dict(num_steps=40, warmup_steps=4, width=8, stem=2))
  c.probe.seeds = (1, 2)  # The probe's own seeds; the conv net keeps config.seeds (0,).
  built = []
  build = trainer.view_cache.build
  monkeypatch.setattr(trainer.view_cache, "build",
                      lambda *a, **k: built.append(k["seed"]) or build(*a, **k))
  wd = tmp_path / "wd"
  summary = trainer.run(c, str(wd))
  # Once per seed: the sweep's two rates share seed 1's features; the conv net's views.
  assert built == [1, 2, 0]
  swept = [json.loads(p.read_text()) for p in sorted((wd / "eval" / "sweep").glob("*.json"))]
  # Scored on the validation split, never the test split; one run per rate.
  assert {r["eval_split"] for r in swept} == {"validation"}
  probe = {r["learning_rate"]: r for r in swept if r["protocol"] == "probe"}
  assert sorted(probe) == [1e-4, 1e-2]
  best = max(probe.values(), key=lambda r: r["metrics"]["miou"])
  results = json.loads((wd / "eval" / "results.json").read_text())
  assert sorted((r["protocol"], r["seed"]) for r in results) == [
      ("probe", 1), ("probe", 2), ("supervised", 0)]
  assert {r["seed"] for r in swept if r["protocol"] == "probe"} == {1}  # The probe's first.
  final = {(r["init"], r["protocol"]): r for r in results if r["seed"] in (0, 1)}
  assert final["scratch", "probe"]["learning_rate"] == best["learning_rate"]
  assert final["scratch", "probe"]["eval_split"] == "test"
  assert final["scratch", "probe"]["train_inputs"] == "cached features"
  # The first seed's final run is the chosen sweep run's model, not a second training.
  assert final["scratch", "probe"]["run_dir"] == best["run_dir"]
  assert final["scratch", "probe"]["train_loss"] == best["train_loss"]
  # The conv net trains from pixels on the same labels and learns more than the majority class.
  convnet = final["convnet", "supervised"]
  assert convnet["num_labels"] == final["scratch", "probe"]["num_labels"]
  assert convnet["train_inputs"] == "cached views"
  from m4.data import scenes  # pylint: disable=g-import-not-at-top
  src = scenes.ScenesSource(scenes_dir, "test")
  labels = np.concatenate([src[i]["semseg"].ravel() for i in range(len(src))])
  assert convnet["metrics"]["pixel_accuracy"] > np.bincount(labels).max() / labels.size + 0.1
  table = (wd / "eval" / "results.md").read_text()
  assert "| supervised |" in table and "Learning-rate sweep" in table
  assert "probe: seeds [1, 2]" in table and "(2)" in table  # The probe row: mean ± std (2).
  assert summary["runs"] == len(results) + len(swept) == 3 + 3
  assert not summary["verdicts"]  # No pretrained arm here: nothing to compare.



def _crashing_at_step_five(make_step):
  """A train_step factory whose steps raise KeyboardInterrupt at the fifth call
  (after the checkpoint at step 3)."""
  calls = []

  def crashing(*settings):
    step = make_step(*settings)

    def crash_at_five(*args):
      calls.append(1)
      if len(calls) == 5:
        raise KeyboardInterrupt("stopped after a checkpoint at step 3")
      return step(*args)

    return crash_at_five

  return crashing


# On cached views or features (a draw by step), and from the loader (its saved state).
@pytest.mark.parametrize("protocol,inputs", [("finetune", "cached views"),
                                             ("probe", "cached features"),
                                             ("finetune", "loader")])
def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, scenes_dir, monkeypatch,
                                                       protocol, inputs):
  c = _scenes_config(scenes_dir, "")
  c.inits, c.protocols = ("scratch",), (protocol,)
  c.checkpoint_every = 3
  c.model = tiny_cfg().to_dict()  # The end-to-end test's model: its compiled steps are reused.
  if inputs == "loader":
    c.cached_views = ("probe",)  # As experiments/transfer_scenes/ was made.
  whole = trainer.run(c, str(tmp_path / "whole"))
  make_step = protocols.train_step
  monkeypatch.setattr(protocols, "train_step", _crashing_at_step_five(make_step))
  with pytest.raises(KeyboardInterrupt):
    trainer.run(c, str(tmp_path / "cut"))
  monkeypatch.setattr(protocols, "train_step", make_step)
  resumed = trainer.run(c, str(tmp_path / "cut"))
  assert resumed["headline"] == whole["headline"]
  get = lambda d: json.loads((tmp_path / d / "eval" / "results.json").read_text())[0]
  assert get("cut")["train_loss"] == get("whole")["train_loss"]
  assert get("cut")["train_inputs"] == get("whole")["train_inputs"] == inputs


def test_a_probe_checkpointed_through_the_loader_does_not_resume_on_cached_features(
    tmp_path, scenes_dir, monkeypatch):
  c = _scenes_config(scenes_dir, "")
  c.inits, c.protocols = ("scratch",), ("probe",)
  c.checkpoint_every = 3
  c.model = tiny_cfg().to_dict()
  monkeypatch.setattr(protocols, "train_step", _crashing_at_step_five(protocols.train_step))
  monkeypatch.setattr(trainer.view_cache, "uncached_reason", lambda *a: "forced")
  with pytest.raises(KeyboardInterrupt):  # Trained through the encoder, checkpointed at 3.
    trainer.run(c, str(tmp_path / "wd"))
  monkeypatch.undo()
  with pytest.raises(workdir.ConfigError, match="written training from the loader"):
    trainer.run(c, str(tmp_path / "wd"))
  run_dir = tmp_path / "wd" / "runs" / "semseg" / "scratch__probe__50pct__s0"
  assert (run_dir / "checkpoints" / "3").is_dir()  # Kept, and no result made of the mix.
  assert not (tmp_path / "wd" / "eval" / "semseg__scratch__probe__50pct__s0.json").exists()


# ------------------------------------------------------------------ TFDS benchmarks


def _aligned_ade(self, split, decoders=None, **kwargs):
  """Mocked scene_parse150 records whose image and annotation sizes agree."""
  del self, split, decoders, kwargs
  rng = np.random.default_rng(0)
  out = []
  for _ in range(6):
    h, w = rng.integers(40, 80, 2)
    ann = rng.integers(0, 151, (h, w), dtype=np.uint8)
    out.append({"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                "annotation": np.repeat(ann[..., None], 3, axis=-1)})
  return out


@pytest.mark.parametrize("name", ["nyu_depth", "ade20k", "imagenet"])
def test_benchmark_configs_run_on_mock_data(name, tmp_path):
  import importlib  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f"configs.transfer.{name}").get_config("mock")
  full = importlib.import_module(f"configs.transfer.{name}").get_config()
  assert full.inits == ("pretrained", "scratch") and full.data.image_size == (224, 224)
  mock = dict(as_data_source_fn=_aligned_ade) if name == "ade20k" else {}
  with tfds.testing.mock_data(num_examples=6, **mock):
    summary = trainer.run(c, str(tmp_path / "wd"))
  results = json.loads((tmp_path / "wd" / "eval" / "results.json").read_text())
  assert len(results) == 1 and results[0]["metrics"]["num_samples"] == 4
  headline = results[0]["headline"][0]
  assert np.isfinite(results[0]["metrics"][headline])
  assert os.path.exists(summary["results"])
