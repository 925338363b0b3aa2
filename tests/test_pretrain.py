"""The pretraining trainer: exact resume after SIGKILL, SIGTERM checkpoints,
the non-finite stop, and learning cross-modal prediction."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from m4 import checkpoints
from m4 import workdir as workdir_lib
from m4.jobs import pretrain
from tests import pretrain_setup as S
from tests.conftest import job_env
from tests.pretrain_setup import assets_fixture, shards_fixture  # pylint: disable=unused-import

TOTAL = 20  # Steps of the reference run (a checkpoint every 4; SIGKILL after the 8th).


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """A persistent compilation cache shared by this module's subprocesses."""
  return str(tmp_path_factory.mktemp("jax_cache"))


def write_config(config, workdir) -> str:
  """A config file (next to `workdir`) whose get_config() returns `config`."""
  path = os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + "_config.py")
  text = json.dumps(workdir_lib._to_builtin(config))  # pylint: disable=protected-access
  with open(path, "w") as f:
    f.write("import json\nimport ml_collections\n\n\ndef get_config(arg=None):\n"
            f"  return ml_collections.ConfigDict(json.loads({text!r}))\n")
  return path


def cache_env(cache) -> dict:
  """Environment for a persistent compilation cache in `cache`."""
  return dict(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _start(config, workdir, cache):
  """`python -m m4.main` on `config` in a subprocess (one CPU device per core)."""
  env = job_env(**cache_env(cache))
  return subprocess.Popen([sys.executable, "-m", "m4.main",
                           f"--config={write_config(config, workdir)}", f"--workdir={workdir}"],
                          env=env, cwd=S.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def logged_losses(workdir):
  """step -> train/loss, the last logged value of each step (resumes log some twice)."""
  return {r["step"]: r["train/loss"] for r in workdir_lib.read_metrics(workdir)
          if "train/loss" in r}


def _committed(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _wait_for(proc, condition, what):
  while not condition():
    if proc.poll() is not None:
      pytest.fail(f"the run ended before {what}:\n{proc.stdout.read()[-3000:]}")
    time.sleep(0.02)


@pytest.fixture(scope="module")
def run_config(assets, shards):
  return S.pretrain_config(assets, shards, total_steps=TOTAL, checkpoint_every=4)


@pytest.fixture(scope="module")
def reference(run_config, tmp_path_factory, cache):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  rc, out = _finish(_start(run_config, workdir, cache))
  assert rc == 0, out[-3000:]
  losses = logged_losses(workdir)
  assert sorted(losses) == list(range(1, TOTAL + 1))
  return losses


def test_resume_after_sigkill_continues_with_the_same_losses(run_config, reference, tmp_path,
                                                            cache):
  workdir = str(tmp_path / "killed")
  proc = _start(run_config, workdir, cache)
  _wait_for(proc, lambda: any(s >= 8 for s in _committed(workdir)), "checkpoint 8")
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  resumed_from = _committed(workdir)[-1]
  assert resumed_from < TOTAL
  rc, out = _finish(_start(run_config, workdir, cache))
  assert rc == 0, out[-3000:]
  assert "resumed_from: " + str(resumed_from) in out
  losses = logged_losses(workdir)
  after = range(resumed_from + 1, TOTAL + 1)
  assert [losses[s] for s in after] == [reference[s] for s in after]  # Exactly equal.
  assert len(set(reference.values())) > TOTAL // 2  # The losses do change from step to step.
  # The run describes its model, modality specs included, beside its checkpoints.
  from m4.models import pretrained  # pylint: disable=g-import-not-at-top
  saved = workdir_lib.read_json(os.path.join(workdir, pretrained.MODEL_FILE))
  cfg = pretrained.read_config(workdir)
  assert sorted(saved["modalities"]) == sorted(cfg.modality_names)
  assert saved["modalities"]["rgb_pixels"]["kind"] == "pixels"


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(run_config, reference, tmp_path, cache):
  workdir = str(tmp_path / "terminated")
  proc = _start(run_config, workdir, cache)
  _wait_for(proc, lambda: max(logged_losses(workdir) or [0]) >= 2, "step 2")
  proc.send_signal(signal.SIGTERM)
  rc, out = _finish(proc)
  assert rc == 1 and "SIGTERM: saved a checkpoint at step" in out, out[-3000:]
  stopped = max(logged_losses(workdir))
  assert stopped < TOTAL and _committed(workdir)[-1] == stopped  # Saved where it stopped.
  rc, out = _finish(_start(run_config, workdir, cache))
  assert rc == 0, out[-3000:]
  losses = logged_losses(workdir)
  assert [losses[s] for s in range(stopped + 1, TOTAL + 1)] == [
      reference[s] for s in range(stopped + 1, TOTAL + 1)]


def _nan_updates_at(step: int) -> optax.GradientTransformation:
  """Turns the updates of training step `step` (1-based) into NaN."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    del params
    bad = state.count + 1 == step
    updates = jax.tree.map(lambda u: jnp.where(bad, jnp.nan, u), updates)
    return updates, optax.ScaleByScheduleState(count=state.count + 1)

  return optax.GradientTransformation(init, update)


def test_a_non_finite_update_stops_the_run_and_keeps_the_last_good_checkpoint(
    assets, shards, tmp_path, monkeypatch):
  config = S.pretrain_config(assets, shards, total_steps=10, checkpoint_every=4)
  make_optimizer = pretrain.make_optimizer
  monkeypatch.setattr(pretrain, "make_optimizer", lambda *a: (
      lambda tx, schedule: (optax.chain(tx, _nan_updates_at(6)), schedule))(*make_optimizer(*a)))
  workdir = str(tmp_path / "nan")
  with pytest.raises(FloatingPointError, match="non-finite values at step 6") as e:
    pretrain.run(config, workdir)
  assert "the last good checkpoint is step 4" in str(e.value)
  assert _committed(workdir) == [4]
  rows = workdir_lib.read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  assert all(np.isfinite(r["train/loss"]) and np.isfinite(r["param_norm"]) for r in rows)
  # The kept checkpoint holds finite parameters.
  abstract = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  meta = abstract.manager.item_metadata(4)["state"]
  abstract.close()
  assert "model" in getattr(meta, "tree", meta)
