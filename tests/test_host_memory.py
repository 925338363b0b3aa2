"""m4.host_memory: freed buffers are reused, not faulted in again."""

import platform
import subprocess
import sys

import pytest

from m4 import host_memory
from tests.conftest import job_env

# A jitted op with a 64 MiB output, run 10 times; prints the fewest page faults of a
# run. m4.host_memory is loaded from its file, so the setting precedes JAX's import.
# Without the setting every run faults the block in; with it, on a loaded machine
# (the test suite's other worker) some runs still find the previous output not yet
# freed and grow the heap, so the median can fault too: the fewest cannot.
PROGRAM = """
import importlib.util, resource, sys
spec = importlib.util.spec_from_file_location("host_memory", sys.argv[2])
host_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_memory)
if sys.argv[1] == "keep":
  assert host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.exp(x - jnp.max(x, -1, keepdims=True)))
x = jax.random.normal(jax.random.key(0), (32, 64, 8192))
jax.block_until_ready(f(x))
counts = []
for _ in range(10):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(f(x))
  counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(counts))  # The fewest: with the setting a run that reuses the freed block faults none.
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_reused_not_faulted_in_again():
  def faults(mode):
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode, host_memory.__file__],
                         env=job_env(), check=True,
                         capture_output=True, text=True, timeout=120)
    return float(out.stdout.split()[-1])
  default = faults("default")
  # 64 MiB is 16384 pages of 4 KiB: with glibc's defaults each run faults them all
  # in (a host with transparent huge pages always on, or another allocator, would not).
  if default < 8000:
    pytest.skip(f"{default:.0f} page faults per run without the setting: nothing to save here")
  kept = faults("keep")
  assert kept < 0.1 * default, (kept, default)
