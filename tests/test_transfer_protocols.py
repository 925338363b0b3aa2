"""Per-task protocol overrides: one task's seeds and sweep, the others' untouched."""

import runpy

import pytest

import m4  # pylint: disable=unused-import
from m4 import workdir
from m4.evaluators import report
from m4.jobs import transfer as trainer
from m4.jobs import transfer_protocols as protocols
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
