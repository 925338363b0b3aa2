"""Two processes (jax.distributed over gloo, 2 CPU devices each) train exactly
as one process with 4 devices and the same global batch, and resume from
their checkpoint."""

import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from m4.jobs import pretokenize
from tests import pretrain_setup as S
from tests.conftest import job_env
from tests import test_pretrain as T

STEPS = 4


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  assets = S.assets(tmp_path_factory)
  shards = str(tmp_path_factory.mktemp("tokens"))
  pretokenize.pretokenize(S.pretokenize_config(assets), shards, progress=False)
  return S.pretrain_config(assets, shards, total_steps=STEPS, checkpoint_every=2)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(config, workdir, cache, *, processes: int, devices: int):
  """Runs m4.main in `processes` processes of `devices` CPU devices each."""
  path = T.write_config(config, workdir)
  # Without the 8-device flag: JAX_NUM_CPU_DEVICES sets the count.
  env = job_env(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
                JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", **T.cache_env(cache))
  cmd = [sys.executable, "-m", "m4.main", f"--config={path}", f"--workdir={workdir}"]
  if processes > 1:
    cmd.append(f"--coordinator_address=127.0.0.1:{_free_port()}")
  procs = [subprocess.Popen(
      cmd + ([f"--num_processes={processes}", f"--process_id={i}"] if processes > 1 else []),
      env=env, cwd=S.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(processes)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


def test_two_processes_train_and_resume_like_one(config, tmp_path, tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  one = str(tmp_path / "one_process")
  _launch(config, one, cache, processes=1, devices=4)
  two = str(tmp_path / "two_processes")
  _launch(config, two, cache, processes=2, devices=2)
  want, got = T.logged_losses(one), T.logged_losses(two)
  assert sorted(got) == list(range(1, STEPS + 1))
  # The same samples in each global batch; only the order of float sums differs.
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=2e-5)
  # Each host saved its own data iterator; resume from step 2 as if step 4 was never saved.
  files = os.listdir(os.path.join(two, "checkpoints", str(STEPS), "data"))
  assert sorted(f for f in files if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  shutil.rmtree(os.path.join(two, "checkpoints", str(STEPS)))
  outs = _launch(config, two, cache, processes=2, devices=2)
  assert "resumed_from: 2" in outs[0]
  again = T.logged_losses(two)
  assert [again[s] for s in (3, 4)] == [got[s] for s in (3, 4)]
