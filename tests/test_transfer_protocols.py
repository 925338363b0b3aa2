"""Per-task protocol overrides: one task's seeds and sweep, the others' untouched."""

import runpy

import pytest

import m4  # pylint: disable=unused-import
from m4 import workdir
from m4.evaluators import report
from m4.jobs import transfer as trainer
from m4.jobs import transfer_protocols as protocols
from m4.models import transfer
from tests.conftest import REPO


def _config():
  """configs/transfer/scenes.py:tiny (count, semseg, depth), from scratch only."""
  c = runpy.run_path(f"{REPO}/configs/transfer/scenes.py")["get_config"]("tiny")
  c.inits, c.init = ("scratch",), ""
  c.model = dict(encoder_modalities=("rgb_pixels",), decoder_modalities=("rgb",), dim=32,
                 encoder_depth=2, decoder_depth=1, num_heads=2, patch_size=8,
                 num_encoder_tokens=64, num_decoder_tokens=64)
  c.sweep.learning_rates = dict(probe=(1e-2, 1e-1), finetune=(), supervised=())
  c.task_protocols.semseg = dict(finetune=dict(seeds=(0, 1, 2), learning_rates=(3e-3, 1e-2),
                                               num_steps=9))
  return c


def test_a_tasks_overrides_apply_to_that_task_only():
  c = _config()
  assert protocols.seeds(c, "semseg", "finetune") == (0, 1, 2)
  assert protocols.sweep_rates(c, "semseg", "finetune") == (3e-3, 1e-2)
  assert protocols.settings(c, "semseg", "finetune").num_steps == 9
  assert "learning_rates" not in protocols.settings(c, "semseg", "finetune")
  # The other tasks and protocols keep the config's own settings.
  assert protocols.seeds(c, "count", "finetune") == (0,)
  assert protocols.sweep_rates(c, "count", "finetune") == ()
  assert protocols.settings(c, "count", "finetune").num_steps == c.finetune.num_steps == 6
  assert protocols.sweep_rates(c, "semseg", "probe") == (1e-2, 1e-1)
  assert c.finetune.seeds == ()  # Resolving never writes into the config.
  # An empty override list turns the task's sweep off.
  c.task_protocols.count = dict(probe=dict(learning_rates=()))
  assert protocols.sweep_rates(c, "count", "probe") == ()


@pytest.mark.parametrize("override, field, message", [
    (dict(nosuch=dict(finetune=dict(seeds=(1,)))), "task_protocols.nosuch", "names no task"),
    (dict(semseg=dict(linear=dict(seeds=(1,)))), "task_protocols.semseg.linear", "is not one of"),
    (dict(semseg=dict(finetune=dict(lr=1e-3))), "task_protocols.semseg.finetune",
     "unknown fields ['lr']"),
    (dict(semseg=dict(finetune=dict(layer_decay=2.0))),
     "task_protocols.semseg.finetune.layer_decay", "must be in (0, 1]"),
    (dict(semseg=dict(probe=dict(learning_rates=(0.1, -1.0)))),
     "task_protocols.semseg.probe.learning_rates", "must be positive"),
    (dict(count=dict(probe=dict(head_pool="max"))), "task_protocols.count.probe.head_pool",
     "is not one of ('mean', 'attention')"),
    (dict(semseg=dict(finetune=dict(head_norm="group"))),
     "task_protocols.semseg.finetune.head_norm", "is not one of ('batch', 'layer')"),
    (dict(semseg=dict(probe=dict(dense_head="deconv"))), "task_protocols.semseg.probe.dense_head",
     "is not one of ('patch', 'bilinear', 'upsample')"),
    (dict(semseg=dict(probe=dict(feature_layers=0))),
     "task_protocols.semseg.probe.feature_layers", "is not a number of encoder layers"),
])
def test_bad_overrides_are_refused_naming_the_field(override, field, message):
  c = _config()
  c.task_protocols = override
  with pytest.raises(workdir.ConfigError) as e:
    trainer.check_config(c)
  assert f"config.{field}" in str(e.value) and message in str(e.value), str(e.value)


def test_the_job_runs_each_task_with_its_own_seeds_and_sweep(tmp_path, monkeypatch):
  c = _config()
  c.protocols = ("finetune",)
  runs = []

  def fake_train_and_evaluate(ctx, run, label="", trained=None):
    del ctx, label
    runs.append((run.task.name, run.seed, float(run.settings.learning_rate), run.split,
                 run.group, int(run.settings.num_steps), trained is not None))
    # Validation: the higher rate wins, so the chosen run is the 1e-2 one.
    score = float(run.settings.learning_rate)
    return ({"metrics": {"m": score}, "headline": ["m"], "higher_is_better": {"m": True}},
            ("model", run.settings.learning_rate))

  monkeypatch.setattr(trainer, "train_and_evaluate", fake_train_and_evaluate)
  monkeypatch.setattr(report, "write", lambda *a, **k: {"table": "t", "plot": "p"})
  monkeypatch.setattr(report, "headline", lambda results: {})
  monkeypatch.setattr(report, "verdicts", lambda results: [])
  summary = trainer.run(c, str(tmp_path / "wd"))
  assert runs == [
      ("count", 0, 3e-3, "test", "", 6, False),  # The config's finetune: one seed, no sweep.
      ("depth", 0, 3e-3, "test", "", 6, False),
      ("semseg", 0, 3e-3, "validation", "sweep", 9, False),  # semseg's own sweep ...
      ("semseg", 0, 1e-2, "validation", "sweep", 9, False),
      ("semseg", 0, 1e-2, "test", "", 9, True),  # ... its chosen model on test ...
      ("semseg", 1, 1e-2, "test", "", 9, False),  # ... and its own seeds at that rate.
      ("semseg", 2, 1e-2, "test", "", 9, False),
  ]
  assert summary["runs"] == len(runs)
  lines = report.describe(c)
  assert "semseg finetune: lr swept over 0.003, 0.01, num steps 9, seeds [0, 1, 2]" in lines
  assert not any("head pool" in line for line in lines)  # The default (mean) goes unsaid ...
  c.finetune.head_pool = "attention"
  assert any(line.startswith("finetune: ") and line.endswith(", head pool attention")
             for line in report.describe(c))  # ... another pooling is named.


def test_more_feature_layers_than_the_encoder_has_are_refused_before_writing(tmp_path):
  c = _config()  # A 2-block encoder.
  c.probe.feature_layers = 2
  trainer.check_config(c)
  protocols.check(c, ("probe",), depth=2)
  c.probe.feature_layers = 3
  trainer.check_config(c)  # The depth is not known before the model's config is read ...
  with pytest.raises(workdir.ConfigError, match=r"^config\.probe\.feature_layers: 3 is not"):
    trainer.run(c, str(tmp_path / "wd"))  # ... which the job does before it writes.
  assert not (tmp_path / "wd").exists()


def test_an_unknown_sharding_rule_is_refused_before_writing(tmp_path):
  c = _config()
  c.sharding_rules = (("act_batch", ("data", "fsdp")), ("length", None))
  with pytest.raises(workdir.ConfigError, match=r"^config\.sharding_rules\[1\]: unknown logical"):
    trainer.run(c, str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


def test_an_init_without_a_model_config_is_refused_before_writing(tmp_path):
  c = _config()
  c.inits, c.init = ("pretrained", "scratch"), str(tmp_path / "empty")
  (tmp_path / "empty").mkdir()
  with pytest.raises(workdir.ConfigError, match=r"^config\.init: "):
    trainer.run(c, str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


def test_an_optional_field_at_its_default_is_not_stored_so_older_runs_resume(tmp_path):
  c = _config()
  ctx = trainer._Context(c, str(tmp_path / "wd"))  # pylint: disable=protected-access
  task = transfer.TaskSpec.from_config("semseg", c.tasks.semseg)

  def stored(layers):
    c.probe.feature_layers = layers
    run = trainer.Run(task, "scratch", "probe", 0.1, 0, protocols.settings(c, "semseg", "probe"),
                      "test")
    return trainer.run_settings(ctx, run)["optimizer"]

  assert "feature_layers" not in stored(1)  # As a run written before the field existed.
  assert stored(2)["feature_layers"] == 2 and stored(2)["head_pool"] == stored(1)["head_pool"]


def test_an_error_names_where_its_value_comes_from():
  c = _config()
  c.finetune.num_steps = 0  # The protocol's own value: semseg's override does not set it ...
  c.task_protocols.semseg = dict(finetune=dict(seeds=(0, 1)))
  with pytest.raises(workdir.ConfigError, match=r"^config\.finetune\.num_steps: "):
    trainer.check_config(c)
  c.task_protocols.semseg.finetune.num_steps = 5  # ... and once it does, count's still fails.
  with pytest.raises(workdir.ConfigError, match=r"^config\.finetune\.num_steps: "):
    trainer.check_config(c)
  c.finetune.num_steps = 5
  c.task_protocols.semseg.finetune.num_steps = 0
  with pytest.raises(workdir.ConfigError,
                     match=r"^config\.task_protocols\.semseg\.finetune\.num_steps: "):
    trainer.check_config(c)


@pytest.mark.parametrize("override, message", [
    (dict(learning_rates=1e-2), "must be a list of learning rates"),
    (dict(num_steps="many"), "task_protocols.semseg.finetune.num_steps"),
])
def test_values_of_the_wrong_type_are_refused_by_name(override, message):
  c = _config()
  c.task_protocols.semseg = dict(finetune=override)
  with pytest.raises(workdir.ConfigError) as e:
    trainer.check_config(c)
  assert message in str(e.value), str(e.value)


SHIPPED = [("configs/transfer/scenes.py", v) for v in ("full", "core", "quick", "tiny")] + [
    (f"configs/transfer/{n}.py", v) for n in ("ade20k", "imagenet", "nyu_depth")
    for v in ("full", "mock")] + [
    ("experiments/transfer_scenes/configs/quick_model.py", v)
    for v in ("finetune_sweep", "probe_sweep", "count")] + [
    ("experiments/transfer_scenes/configs/full_model.py", v)
    for v in ("default", "rgbd", "dense_probe", "dense_finetune", "depth_finetune", "closing",
              "closing_rgbd")] + [
    ("experiments/transfer_scenes/configs/new_modality.py", "default")]


@pytest.mark.parametrize("path, variant", SHIPPED)
def test_every_shipped_transfer_config_passes_the_checks(path, variant):
  c = runpy.run_path(f"{REPO}/{path}")["get_config"](variant)
  c.inits, c.init = ("scratch",), ""  # No pretrained run on this machine; the rest as shipped.
  trainer.check_config(c)
  for task in c.tasks:
    for protocol in c.protocols:
      assert protocols.seeds(c, task, protocol)
