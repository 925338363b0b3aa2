"""m4.host_memory: freed buffers are reused, not faulted in again."""

import platform
import subprocess
import sys

import pytest

from tests.conftest import job_env

# A jitted op with a 64 MiB output, run 10 times; prints the page faults per run.
PROGRAM = """
import resource, sys
from m4 import host_memory
if sys.argv[1] == "keep":
  assert host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.exp(x - jnp.max(x, -1, keepdims=True)))
x = jax.random.normal(jax.random.key(0), (32, 64, 8192))
jax.block_until_ready(f(x))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  jax.block_until_ready(f(x))
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_reused_not_faulted_in_again():
  def faults(mode):
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], env=job_env(), check=True,
                         capture_output=True, text=True, timeout=120)
    return float(out.stdout.split()[-1])
  default, kept = faults("default"), faults("keep")
  # 64 MiB is 16384 pages of 4 KiB: by default each run faults them all in; kept,
  # about a fifth after importing m4 (and JAX) first, as m4.main does; none before.
  assert default > 8000, default
  assert kept < 0.5 * default, (kept, default)
