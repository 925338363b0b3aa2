"""Test setup: 8 simulated CPU devices, so sharding tests run anywhere."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow stays on the CPU.

# The test programs are small and each is compiled once or twice: compiling
# dominates, so XLA's backend optimisations cost more than they save, in this
# process and in the jobs the tests start as subprocesses (they inherit the
# flag; a 4-step pretraining job: 32 s instead of 42 s, the same losses).
# The jobs users run keep the default level.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

import pytest  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def job_env(**extra) -> dict:
  """The environment of an `m4.main` subprocess: this repo on the path and the
  devices a user's run gets (one per core, m4.sharding.use_cpu_devices) instead
  of the tests' 8; the rest of XLA_FLAGS is kept."""
  env = dict(os.environ, PYTHONPATH=REPO, **extra)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  return env


@pytest.fixture
def repo_root():
  return REPO


# The longest modules (two-process training, the resumed pretraining runs, the
# fault campaign's fixture run, the learning tokenizer, transfer), run first:
# pytest.ini hands whole modules to the workers in collection order, so a long
# module collected late runs alone at the end while the other core idles.
LONGEST_FIRST = ("test_multihost.py", "test_pretrain.py", "test_faults.py", "test_vq.py",
                 "test_transfer_job.py", "test_fourm.py", "test_transfer.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: modules stay whole.
