"""Pre-tokenizes a dataset into token shards (m4.jobs.pretokenize) outside m4.main.

    python -m m4.tools.pretokenize --config=configs/pretokenize/scenes.py --workdir=DIR
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from m4 import workdir as workdir_lib
from m4.jobs.pretokenize import pretokenize
from m4.workdir import ConfigError, DataError


def main(argv):
  del argv
  config, out = flags.FLAGS.config, flags.FLAGS.workdir
  try:
    workdir_lib.check_workdir(out)
    summary = pretokenize(config, out, record_config=True)
  except ConfigError as e:
    print(f"m4: error: {e}", file=sys.stderr)
    sys.exit(2)
  except (DataError, OSError) as e:
    print(f"m4: error: {e}", file=sys.stderr)
    sys.exit(1)
  print(workdir_lib.format_summary(summary))


def cli():
  config_flags.DEFINE_config_file("config", None, "A config file with get_config().")
  flags.DEFINE_string("workdir", None, "Where the shards go.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)


if __name__ == "__main__":
  cli()
