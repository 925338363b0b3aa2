"""Keeps freed memory inside the process (Linux, glibc), so XLA's CPU buffers
are reused rather than handed back to the kernel and faulted in again.

By default glibc serves large blocks (and the tops of threads' arenas) with
mmap / munmap: every training step then touches its activations' pages afresh,
one page fault per 4 KiB (on 2 cores, 20 % of the main job's CPU time went to
the kernel). One arena, no mmap (where a thread's arena allows) and no
trimming let the heap keep its pages:
the same numbers, less time (experiments/train_speed/, "Freed memory kept").
The price is a resident size that stays at its peak.

    from m4 import host_memory
    host_memory.keep_freed_memory()   # Before JAX's backend starts its threads.
"""

from __future__ import annotations

import ctypes
import platform
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed_memory() -> bool:
  """Sets glibc's malloc as above (True if every setting took); False and
  nothing changed elsewhere. Threads that already have an arena keep it: the
  earlier the call, the more pages are kept."""
  if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  return all([mallopt(param, value) == 1 for param, value in _SETTINGS])  # Each one tried.
