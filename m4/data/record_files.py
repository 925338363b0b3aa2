"""ArrayRecord files that are written whole or not at all.

    with RecordWriter(path) as w:
      for record in records: w.write(record)
      w.commit()        # without it (an exception), the temp file is removed

A writer writes a hidden temp file beside `path`, named by host and process
(`partial_prefix(path) + pid`), and renames it into place on commit, so a
finished file is never rewritten and a half-written one is never read. What a
killed writer leaves is deleted by `remove_stale_partials`. The scenes dataset
and the token shards are written this way.
"""

from __future__ import annotations

import glob
import os
import socket

from array_record.python import array_record_module

RECORD_OPTIONS = "group_size:1,zstd:3"  # group_size 1: fast random access.


def partial_prefix(final: str) -> str:
  """The temp files of `final`: this prefix + the writer's pid."""
  d, name = os.path.split(final)
  return os.path.join(d, f".{name}.partial.{socket.gethostname()}.")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_partials(final: str) -> None:
  """Deletes the temp files of `final` (a path or a glob of paths) that this
  host's writers left and that are gone."""
  for path in glob.glob(partial_prefix(final) + "*"):
    try:
      pid = int(path.rsplit(".", 1)[1])
    except ValueError:
      continue
    if pid != os.getpid() and not _pid_alive(pid):
      os.remove(path)


class RecordWriter:
  """Writes `final` through a temp file; `commit()` renames it into place."""

  def __init__(self, final: str):
    if os.path.exists(final):
      raise FileExistsError(f"{final} exists; finished files are never rewritten.")
    os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
    self.final = final
    self.tmp = partial_prefix(final) + str(os.getpid())
    self._writer = array_record_module.ArrayRecordWriter(self.tmp, RECORD_OPTIONS)

  def write(self, record: bytes) -> None:
    self._writer.write(record)

  def commit(self) -> None:
    self._writer.close()
    self._writer = None
    os.replace(self.tmp, self.final)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    if os.path.exists(self.tmp):
      os.remove(self.tmp)


def num_records(path: str) -> int:
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()
