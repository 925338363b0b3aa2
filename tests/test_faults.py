"""Fault injection (issue 15): refusals leave the workdir byte-identical, errors
are one line naming the culprit, resume falls back to the last good checkpoint.

One tiny pretraining run (`reference`, a subprocess that fills a persistent
compilation cache) is copied and damaged by the cases below; the other
subprocess runs use the same config (or change only what is not compiled),
so they compile nothing. experiments/faults/README.md tabulates the cases.
"""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from m4 import checkpoints
from m4 import workdir as workdir_lib
from m4.data import token_shards
from m4.jobs import pretrain
from m4.workdir import ConfigError, DataError
from tests import pretrain_setup as S
from tests.pretrain_setup import assets_fixture, shards_fixture  # pylint: disable=unused-import
from tests.conftest import job_env
from tests.test_pretrain import cache_env, logged_losses, write_config

TOTAL, EVERY = 15, 3  # Steps of the reference run; checkpoint interval.
FIXTURE = os.path.join(S.REPO, "tests", "fixtures", "ml4m_tiny")
_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")  # absl log lines.


# ---------------------------------------------------------------------------
# Helpers.


def _tree_hash(root) -> dict:
  """{relative path: sha256} of every file (and each directory, as "dir")."""
  out = {}
  for d, dirs, files in os.walk(root):
    for n in dirs:
      out[os.path.relpath(os.path.join(d, n), root)] = "dir"
    for n in files:
      with open(os.path.join(d, n), "rb") as f:
        out[os.path.relpath(os.path.join(d, n), root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _said(output: str) -> list[str]:
  """The lines meant for the user: no absl logs, progress bars or blank lines."""
  return [l for l in output.splitlines()
          if l.strip() and not _LOG.match(l) and not l.startswith(("pretrain step", "\r"))]


def _one_error_line(output: str) -> str:
  """Asserts the run said exactly one `m4: error:` line, last, and no traceback."""
  for noise in ("Traceback", "Event loop is closed", "meta_path", "Exception ignored"):
    assert noise not in output, output[-4000:]
  errors = [l for l in _said(output) if l.startswith("m4: error:")]
  assert len(errors) == 1 and _said(output)[-1] == errors[0], output[-4000:]
  return errors[0]


def _main(config_or_args, workdir=None, cache=None, wait=True, env=None):
  """`python -m m4.main` in a subprocess (stderr merged into stdout)."""
  args = config_or_args
  if workdir is not None:
    args = [f"--config={write_config(config_or_args, str(workdir))}", f"--workdir={workdir}"]
  env = job_env(**(cache_env(cache) if cache else {}), **(env or {}))
  proc = subprocess.Popen([sys.executable, "-m", "m4.main", *args], cwd=S.REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if not wait:
    return proc
  out, _ = proc.communicate(timeout=600)
  return proc.returncode, out


def _committed(workdir) -> list[int]:
  d = os.path.join(str(workdir), "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _truncate(path, keep=0.5):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:int(len(data) * keep)])


def _largest_file(directory) -> str:
  files = [os.path.join(d, n) for d, _, ns in os.walk(directory) for n in ns]
  return max(files, key=os.path.getsize)


def _mount_tmpfs(path, options) -> bool:
  os.makedirs(path, exist_ok=True)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                     capture_output=True, check=False)
  return r.returncode == 0


def _umount(path):
  subprocess.run(["umount", str(path)], capture_output=True, check=False)


# ---------------------------------------------------------------------------
# The reference run.


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def config(assets, shards):
  """A tiny pretraining: 1+1 blocks of width 32, a checkpoint every 3 steps; a
  prediction grid asked for with no cross-modal targets (nothing to draw: the
  run must still end)."""
  return S.pretrain_config(assets, shards, total_steps=TOTAL, checkpoint_every=EVERY,
                           **{"model.dim": 32, "model.encoder_depth": 1,
                              "model.decoder_depth": 1, "eval.grid_samples": 2})


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory, cache):
  """The uninterrupted run: its workdir and its losses by step."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  rc, out = _main(config, workdir, cache)
  assert rc == 0, out[-3000:]
  assert not os.path.exists(os.path.join(workdir, "predictions.png"))  # No targets, no grid.
  losses = logged_losses(workdir)
  assert sorted(losses) == list(range(1, TOTAL + 1))
  return workdir, losses


def _copy(reference_, tmp_path, name="run") -> str:
  workdir = str(tmp_path / name)
  shutil.copytree(reference_[0], workdir)
  return workdir


def _with(config_, **overrides):
  return S.with_overrides(config_.copy_and_resolve_references(), **overrides)


# ---------------------------------------------------------------------------
# 1, 4: a refused resume writes nothing and says one line.


def test_refused_resume_leaves_the_workdir_byte_identical(config, reference, tmp_path, cache):
  workdir = _copy(reference, tmp_path)
  before = _tree_hash(workdir)
  rc, out = _main(_with(config, **{"model.dim": 64}), workdir, cache)
  assert rc == 2, out[-3000:]
  line = _one_error_line(out)
  assert workdir in line and "model/" in line and "(32," in line and "(64," in line, line
  assert _tree_hash(workdir) == before  # config.json too: byte for byte.


_REFUSED = {  # case: (overrides, the error); the cross-modal ones used to fail at an evaluation.
    "init": ({"init": "{tmp}/nonexistent"}, r"config\.init.*nonexistent"),
    "text input": ({"eval.cross_modal.inputs": ("caption",), "eval.cross_modal.targets": ("semseg",)},
                   r"config\.eval\.cross_modal\.inputs: 'caption' is not an image or pixel"),
    "no input": ({"eval.cross_modal.inputs": (), "eval.cross_modal.targets": ("semseg",)},
                 r"config\.eval\.cross_modal\.inputs: is empty; predicting \('semseg',\)"),
}


@pytest.mark.parametrize("case", sorted(_REFUSED))
def test_a_refused_fresh_run_creates_nothing(config, tmp_path, case):
  """Refused before the first step, not at the first evaluation."""
  workdir = str(tmp_path / "fresh")
  overrides, match = _REFUSED[case]
  overrides = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in overrides.items()}
  with pytest.raises(ConfigError, match=match):
    pretrain.run(_with(config, **overrides), workdir)
  assert not os.path.exists(workdir)


# ---------------------------------------------------------------------------
# 2: restore_subtree checks shapes and dtypes without shardings.


def test_restore_subtree_checks_shapes_and_dtypes_without_shardings(reference):
  import jax  # pylint: disable=g-import-not-at-top
  stored = checkpoints.Checkpointer(os.path.join(reference[0], "checkpoints"), read_only=True)
  with stored:
    tree = stored.stored_state(stored.latest_step())["model"]
  same = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
  got = checkpoints.restore_subtree(reference[0], same)  # No shardings: numpy arrays.
  assert jax.tree.map(np.shape, got) == jax.tree.map(lambda m: tuple(m.shape), tree)
  wider = dict(same, context_proj=jax.ShapeDtypeStruct((64, 64), np.float32))
  with pytest.raises(ConfigError, match=r"context_proj as \(32, 32\) float32.*wants"
                     r" \(64, 64\) float32"):
    checkpoints.restore_subtree(reference[0], wider)
  ints = dict(same, context_proj=jax.ShapeDtypeStruct((32, 32), np.int32))
  with pytest.raises(ConfigError, match=r"context_proj.*\(32, 32\) int32"):
    checkpoints.restore_subtree(reference[0], ints)


# ---------------------------------------------------------------------------
# 5: corrupt checkpoints are named, resume falls back, nothing is deleted.


def test_truncated_checkpoint_metadata_falls_back_to_the_previous_one(config, reference, tmp_path,
                                                                     cache):
  workdir = _copy(reference, tmp_path)
  last = _committed(workdir)[-1]
  bad = os.path.join(workdir, "checkpoints", str(last), "state", "_METADATA")
  _truncate(bad)
  with open(bad, "rb") as f:
    damaged = f.read()
  rc, out = _main(config, workdir, cache)
  assert rc == 0, out[-3000:]
  step_dir = os.path.join(workdir, "checkpoints", str(last))
  assert f"m4: warning: skipping checkpoint {last}: {step_dir}:" in out, out[-3000:]
  assert f"resumed_from: {last - EVERY}" in out
  losses = logged_losses(workdir)
  assert [losses[s] for s in range(last - EVERY + 1, TOTAL + 1)] == [
      reference[1][s] for s in range(last - EVERY + 1, TOTAL + 1)]  # Exactly equal.
  kept = os.path.join(workdir, "checkpoints_unreadable", str(last), "state", "_METADATA")
  with open(kept, "rb") as f:
    assert f.read() == damaged  # Moved aside, never deleted.


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_damaged_checkpoint_arrays_are_named_and_skipped(reference, tmp_path, damage):
  import jax  # pylint: disable=g-import-not-at-top
  directory = str(tmp_path / "checkpoints")
  shutil.copytree(os.path.join(reference[0], "checkpoints"), directory)
  last = max(int(n) for n in os.listdir(directory) if n.isdigit())
  bad = _largest_file(os.path.join(directory, str(last), "state"))
  if damage == "truncate":
    _truncate(bad)
  else:
    with open(bad, "r+b") as f:
      size = os.path.getsize(bad)
      f.seek(size // 4)
      f.write(np.full(size // 2, 0xFF, np.uint8).tobytes())  # NaN bit patterns.
  ckpt = checkpoints.Checkpointer(directory, read_only=True)
  with ckpt:
    tree = ckpt.stored_state(last - EVERY)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
    with pytest.raises(checkpoints.CheckpointError, match=re.escape(ckpt.step_dir(last))):
      ckpt.restore(target, step=last)
    _, meta, step = ckpt.restore_latest(target)
  assert step == last - EVERY and meta["step"] == last - EVERY
  assert os.path.exists(bad)  # Read-only: nothing moved.


# ---------------------------------------------------------------------------
# 5: corrupt token shards are named.


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_damaged_token_shard_is_named(shards, tmp_path, damage):
  directory = str(tmp_path / "tokens")
  shutil.copytree(shards, directory)
  spec = token_shards.read_spec(directory)
  n = spec["splits"]["train"]["num_shards"]
  bad = token_shards.shard_path(directory, "train", 1, n)
  if damage == "truncate":
    _truncate(bad)
    with pytest.raises(DataError, match=re.escape(bad)):
      token_shards.TokenShardSource(directory, "train")
  else:
    with open(bad, "r+b") as f:
      f.seek(os.path.getsize(bad) // 3)
      f.write(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    source = token_shards.TokenShardSource(directory, "train")
    with pytest.raises(DataError, match=re.escape(bad) + ".*record"):
      for i in range(len(source)):
        source[i]


# ---------------------------------------------------------------------------
# 4, 5: a full disk: one line naming the path, and the run resumes.


def test_full_disk_says_one_line_and_the_run_resumes(config, reference, tmp_path, cache):
  one = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in
            os.walk(os.path.join(reference[0], "checkpoints", str(TOTAL))) for n in ns)
  assert one > 0
  disk = tmp_path / "disk"
  env = None
  if _mount_tmpfs(disk, f"size={int(one * 1.6) // 4096 * 4096}"):  # Room for one checkpoint.
    workdir = str(disk / "run")
  else:  # No mount here: the second checkpoint's save raises ENOSPC instead.
    workdir = str(tmp_path / "run")
    env = {"M4_TEST_ENOSPC_AT_STEP": str(2 * EVERY)}
  try:
    if env:
      args = [f"--config={write_config(config, workdir)}", f"--workdir={workdir}"]
      proc = subprocess.run(
          [sys.executable, "-c", _ENOSPC_SHIM, *args], cwd=S.REPO, capture_output=True,
          text=True, timeout=600, env=job_env(**cache_env(cache), **env))
      rc, out = proc.returncode, proc.stdout + proc.stderr
    else:
      rc, out = _main(config, workdir, cache)
    assert rc == 1, out[-3000:]
    line = _one_error_line(out)
    # The culprit is whichever write hit the full disk first: the checkpoint
    # (saved in the background) or the metrics row written meanwhile.
    assert "No space left on device" in line, line
    assert (os.path.join(workdir, "checkpoints") in line
            or os.path.join(workdir, "metrics.jsonl") in line), line
    assert _committed(workdir) == [EVERY]
    moved = str(tmp_path / "bigger")
    shutil.copytree(workdir, moved)
  finally:
    _umount(disk)
  rc, out = _main(config, moved, cache)
  assert rc == 0, out[-3000:]
  assert f"resumed_from: {EVERY}" in out
  losses = logged_losses(moved)
  assert [losses[s] for s in range(EVERY + 1, TOTAL + 1)] == [
      reference[1][s] for s in range(EVERY + 1, TOTAL + 1)]


# Where tmpfs cannot be mounted: m4.main with the checkpoint save at one step raising ENOSPC.
_ENOSPC_SHIM = """
import errno, os, sys
from m4 import checkpoints
real = checkpoints.Checkpointer.save
def save(self, step, *a, **k):
  if step == int(os.environ["M4_TEST_ENOSPC_AT_STEP"]):
    raise OSError(errno.ENOSPC, f"{self.directory}: cannot write the checkpoint: "
                  + os.strerror(errno.ENOSPC))
  return real(self, step, *a, **k)
checkpoints.Checkpointer.save = save
sys.argv = ["m4.main", *sys.argv[1:]]
from m4 import main
main.run()
"""


# ---------------------------------------------------------------------------
# 4: signals.


def _wait_for_rows(proc, workdir, rows):
  """Until metrics.jsonl holds `rows` rows (the process is in its training loop)."""
  while len(workdir_lib.read_metrics(workdir)) < rows:
    if proc.poll() is not None:
      pytest.fail(f"the run ended before row {rows}:\n{proc.stdout.read()[-3000:]}")
    time.sleep(0.02)


def test_ctrl_c_and_sigterm_end_cleanly_and_resume(config, reference, tmp_path, cache):
  workdir = str(tmp_path / "run")
  proc = _main(config, workdir, cache, wait=False)
  _wait_for_rows(proc, workdir, 2)
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGINT, out[-3000:]
  assert "interrupted (Ctrl-C)" in _one_error_line(out)
  saved = _committed(workdir)
  start = saved[-1] if saved else 0
  rows = len(workdir_lib.read_metrics(workdir))
  proc = _main(config, workdir, cache, wait=False)  # Resumes, then gets SIGTERM.
  _wait_for_rows(proc, workdir, rows + 2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 1, out[-3000:]
  for noise in ("Traceback", "Event loop is closed", "meta_path", "Exception ignored"):
    assert noise not in out, out[-3000:]
  assert _said(out)[-1].startswith("pretrain: SIGTERM: saved a checkpoint at step")
  stopped = _committed(workdir)[-1]
  assert stopped > start
  losses = logged_losses(workdir)
  assert [losses[s] for s in range(1, stopped + 1)] == [reference[1][s]
                                                        for s in range(1, stopped + 1)]


# ---------------------------------------------------------------------------
# 9: the divergence guard.


def test_divergence_guard_keeps_the_last_healthy_checkpoint(config, reference, tmp_path, cache):
  # The guard with window 1 compares each step's gradient norm with the step
  # before; a factor between the largest ratio and the largest one before it
  # stops the run exactly at the step of the largest ratio.
  norms = {r["step"]: r["grad_norm"] for r in workdir_lib.read_metrics(reference[0])
           if "grad_norm" in r}
  ratio = {s: norms[s] / norms[s - 1] for s in range(2, TOTAL + 1)}
  spike = max(ratio, key=ratio.get)
  before = max([ratio[s] for s in ratio if s < spike] + [1.0])
  factor = (ratio[spike] + before) / 2
  assert factor > 1
  guarded = _with(config, divergence=dict(loss_factor=3.0, grad_norm_factor=factor, window=1,
                                          min_steps=1))
  workdir = str(tmp_path / "run")
  rc, out = _main(guarded, workdir, cache)
  assert rc == 1, out[-3000:]
  line = _one_error_line(out)
  assert f"divergence at step {spike}: gradient norm" in line, line
  healthy = (spike - 1) // EVERY * EVERY
  assert _committed(workdir) == [s for s in range(EVERY, spike, EVERY)][-2:]
  assert (f"the last healthy checkpoint is step {healthy}" if healthy
          else "no checkpoint was saved before it") in line
  assert max(logged_losses(workdir)) == spike - 1  # Nothing of the bad step was logged.


def test_divergence_guard_stops_at_the_first_spike():
  settings = dict(loss_factor=3.0, grad_norm_factor=20.0, window=100, min_steps=2)
  guard = pretrain.DivergenceGuard(settings)  # configs/pretrain/scenes_tiny.py's.
  # Issue 15's run: lr 1e3, the loss reached 2.4e6 at step 3.
  guard.check(1, {"loss": 6.9, "grad_norm": 17.5})
  guard.check(2, {"loss": 6.9, "grad_norm": 21.8})
  with pytest.raises(pretrain.Diverged) as e:
    guard.check(3, {"loss": 2.4e6, "grad_norm": 3.9})
  assert e.value.args[:2] == (3, "loss")
  with pytest.raises(ConfigError, match="config.divergence.loss_factor"):
    pretrain.DivergenceGuard(dict(settings, loss_factor=0.5))
  with pytest.raises(ConfigError, match="config.divergence: unknown fields"):
    pretrain.DivergenceGuard(dict(settings, nope=1))
  with pytest.raises(ConfigError, match=r"config.divergence: missing fields \['window'\]"):
    pretrain.DivergenceGuard({k: v for k, v in settings.items() if k != "window"})


# ---------------------------------------------------------------------------
# 7, 8: converter inputs.


def test_converter_bad_sources_are_one_line_naming_them(tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  text = tmp_path / "notes.safetensors"
  text.write_text("not a checkpoint\n")
  cut = tmp_path / "cut" / "model.safetensors"
  cut.parent.mkdir()
  shutil.copy(os.path.join(FIXTURE, "model.safetensors"), cut)
  _truncate(cut, 0.7)
  tensors = load_file(os.path.join(FIXTURE, "model.safetensors"))
  name = sorted(tensors)[3]
  tensors[name] = tensors[name].copy()
  tensors[name].flat[5] = np.nan
  nan = tmp_path / "nan.safetensors"
  save_file(tensors, str(nan))
  cases = {str(text): str(text), str(cut): str(cut), str(nan): repr(name)}
  env = dict(os.environ, PYTHONPATH=S.REPO)
  procs = {src: subprocess.Popen(
      [sys.executable, "-m", "m4.tools.convert_4m", f"--src={src}", f"--out={tmp_path / 'out'}"],
      cwd=S.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for src in cases}
  for src, named in cases.items():
    out, _ = procs[src].communicate(timeout=300)
    assert procs[src].returncode == 2, out[-3000:]
    assert named in _one_error_line(out), out[-3000:]
  assert "NaN or inf" in out
  assert not os.path.exists(tmp_path / "out")


# ---------------------------------------------------------------------------
# 8: workdirs that cannot be one.


_ECHO = """
import ml_collections
def get_config(arg=None):
  return ml_collections.ConfigDict({"job": "quickstart", "order": (), "stages": {}})
"""


def test_unusable_workdirs_are_one_line_naming_them(tmp_path):
  cfg = tmp_path / "echo.py"
  cfg.write_text(_ECHO)
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  readonly = tmp_path / "ro"
  mounted = _mount_tmpfs(readonly, "ro,size=64k")
  try:
    cases = [(a_file, "is a file"), (a_file / "sub", f"{a_file} is a file")]
    if mounted:
      cases.append((readonly / "run", "not writable"))
    procs = [(_main([f"--config={cfg}", f"--workdir={w}"], wait=False), w, m) for w, m in cases]
    for proc, w, message in procs:
      out, _ = proc.communicate(timeout=300)
      assert proc.returncode == 2, out
      line = _one_error_line(out)
      assert str(w) in line and message in line, line
  finally:
    if mounted:
      _umount(readonly)
  os.makedirs(tmp_path / "locked")
  real = os.access
  try:  # Read-only without a mount (root passes permission checks): what access reports.
    os.access = lambda p, mode: False if str(p).endswith("locked") else real(p, mode)
    with pytest.raises(ConfigError, match=r"--workdir: .*locked.* not writable"):
      workdir_lib.check_workdir(str(tmp_path / "locked" / "run"))
  finally:
    os.access = real
  assert a_file.read_text() == "x"
