"""Runs one m4 job: `python -m m4.main --config=configs/X.py --workdir=DIR`.

`config.job` picks the job from `m4.jobs.JOBS`. Any config field
can be overridden on the command line as `--config.a.b=value`. The job writes
the resolved config to `DIR/config.json` once it has checked it against
what DIR holds; running again on the same workdir resumes (or skips what is
done).

Errors are one line on stderr, `m4: error: ...`, naming the field, file or
sample: exit status 2 for bad usage (flags, config, workdir), 1 for a run
that failed (a damaged input, a full disk, divergence), 130 for Ctrl-C.
Whatever ends the job, its checkpointers are closed first (no orbax thread
outlives it), and a refused run leaves the workdir as it was.

On a CPU the job runs data-parallel over one XLA device per core (a power of
two, at most 8; `--cpu_devices=N` sets N, 1 turns it off): XLA:CPU keeps a
second core mostly idle inside one device's convolutions and small matmuls,
so 2 devices on 2 cores train the VQ tokenizers about 1.9x and the 4M model
about 1.4x faster (experiments/train_speed/, "One device per core").

Multi-host: run the same command on every host with `--distributed`
(`jax.distributed.initialize()`, which finds its peers on Cloud TPU, Slurm
and Open MPI), or name them: `--coordinator_address=HOST0:PORT
--num_processes=N --process_id=I`. Each process reads its own share of the
data; process 0 writes config, metrics and pictures; checkpoints are written
by all.
"""

import logging as std_logging
import runpy
import signal
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from m4 import host_memory
from m4 import jobs
from m4 import sharding
from m4 import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file with get_config().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host: jax.distributed.initialize() with auto-detection.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "Multi-host: HOST:PORT of process 0 (implies --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "XLA devices on the host CPU; 0: one per core (a power of two, at most"
    " 8; single-host runs only), 1: one device.")


def _quiet_background_errors():
  """Silences asyncio's reports of futures that failed with the job's own error.

  After a failed checkpoint write (a full disk, say), orbax's background
  futures are garbage-collected later and asyncio logs each one with the same
  cause; the job reports that cause once, as its `m4: error:` line.
  """
  std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)


def _fail(message: str, status: int = 2):
  """One line on stderr, then exit `status` (2, the default: bad usage)."""
  _quiet_background_errors()
  print(f"m4: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(status)


def _close_checkpointers():
  """Closes the job's orbax checkpointers, if it opened any (m4.checkpoints)."""
  if "m4.checkpoints" in sys.modules:
    sys.modules["m4.checkpoints"].close_all()


def _find_bad_override(argv) -> str | None:
  """Names the first `--config.a.b=v` whose path is not in the config file."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  try:
    config = runpy.run_path(path)["get_config"](*([arg] if arg else []))
  except Exception:  # pylint: disable=broad-except
    return None
  for a in argv:
    if not a.startswith("--config."):
      continue
    key = a[len("--config."):].split("=", 1)[0]
    node = config
    for part in key.split("."):
      try:
        node = node[part]
      except (KeyError, TypeError, IndexError, ValueError):
        return f"--config.{key}: the config has no field {part!r} ({path})"
  return None


def _flag_error(e: Exception) -> str:
  """absl's flag error in one line; for a config file that raised, its error
  (the traceback's last line, e.g. an unknown variant naming the file)."""
  lines = [l for l in str(e).strip().splitlines() if l.strip()]
  if len(lines) > 1 and "Error whilst parsing config file" in lines[0]:
    kind, _, message = lines[-1].partition(": ")
    return message if message and kind.isidentifier() else lines[-1]
  return lines[0] if lines else type(e).__name__


def _parse_flags(argv):
  """absl parsing, with bad flags and configs reported as one line."""
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    _fail(_find_bad_override(argv) or _flag_error(e))
  if _CONFIG.value is None or flags.FLAGS["config"].config_filename is None:
    _fail("--config is required, e.g. --config=configs/quickstart.py")
  try:
    config = _CONFIG.value  # Loading is lazy: a missing file raises here.
    config.get("job")
  except Exception as e:  # pylint: disable=broad-except
    path = flags.FLAGS["config"].config_filename
    _fail(f"cannot load config file {path!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
  if "job" not in config:
    _fail(f"config {flags.FLAGS['config'].config_filename!r} has no field 'job'")
  if config.job not in jobs.JOBS:
    _fail(f"unknown job {config.job!r} (config.job); known: {sorted(jobs.JOBS)}")
  if not _WORKDIR.value:
    _fail("--workdir is required")
  return rest


def _set_cpu_devices():
  """CPU devices (m4.sharding.use_cpu_devices) before anything touches a backend;
  multi-host runs keep their count unless --cpu_devices names one."""
  if _CPU_DEVICES.value == 0 and (_DISTRIBUTED.value or _COORDINATOR.value):
    return
  try:
    sharding.use_cpu_devices(_CPU_DEVICES.value)
  except ValueError:
    _fail(f"--cpu_devices must be 0 (one per core) or a positive count, got {_CPU_DEVICES.value}")


def _init_distributed():
  """jax.distributed.initialize, before anything touches a JAX backend."""
  if not (_DISTRIBUTED.value or _COORDINATOR.value):
    return
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value or None,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  logging.info("m4: process %d of %d", jax.process_index(), jax.process_count())


def _run_closing(config, workdir: str):
  """Runs the job; its checkpointers are closed whatever ends it."""
  try:
    workdir_lib.check_workdir(workdir)
    devices = jax.devices()
    logging.info("m4: running job %r in %s on %d %s device(s)", config.job, workdir, len(devices),
                 devices[0].platform)
    return jobs.get(config.job)(config, workdir), None
  except BaseException:
    _quiet_background_errors()
    raise
  finally:
    _close_checkpointers()


def _run(config, workdir: str):
  """The job; (summary, None) or (None, (exit status, one-line message))."""
  try:
    return _run_closing(config, workdir)
  except workdir_lib.ConfigError as e:
    return None, (2, str(e))
  except OSError as e:  # A full disk, a file that vanished, ...
    where = f"{e.filename}: " if e.filename else ""
    return None, (1, f"{where}{e.strerror}" if e.strerror else str(e))
  except (workdir_lib.DataError, FloatingPointError) as e:
    return None, (1, str(e))
  except KeyboardInterrupt:
    return None, (128 + signal.SIGINT, "interrupted (Ctrl-C); run the same command again to"
                  " resume from the last checkpoint.")


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  host_memory.keep_freed_memory()
  _set_cpu_devices()
  _init_distributed()
  summary, error = _run(_CONFIG.value, _WORKDIR.value)
  if error:
    _fail(error[1], error[0])
  if summary and jax.process_index() == 0:
    print(workdir_lib.format_summary(summary))


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
