"""Test setup: 8 simulated CPU devices, so sharding tests run anywhere."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow stays on the CPU.

# In this process the programs are small and each is compiled once or twice:
# compiling dominates, so XLA's backend optimisations cost more than they save
# (-13 % on test_fourm + test_vq on a 2-core EPYC). XLA reads its flags when
# the backend starts, so the flag is taken out of the environment again after
# that: the jobs the tests start as subprocesses train for tens of steps and
# run as users run them.
_O0 = " --xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += _O0
import jax  # pylint: disable=g-import-not-at-top
jax.devices()
os.environ["XLA_FLAGS"] = os.environ["XLA_FLAGS"].replace(_O0, "")

import pytest  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root():
  return REPO
