"""The main job's transfer stage alone, on a finished main-job workdir.

    python experiments/train_speed/transfer_stage.py --workdir=workdirs/quickstart \
        --out=/tmp/transfer_views [--cached_views=probe]

Runs the `transfer` stage of configs/quickstart.py (its pretrained model,
data and tokenizers are read; nothing is written there) in the fresh
directory `--out`, with `config.cached_views` set to `--cached_views`
(comma-separated protocols; default: the config's), and prints one JSON
line: the protocols on cached views, the stage's seconds and its verdicts.
Run each variant in its own process, alternated.
"""

import argparse
import json
import os
import runpy
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from m4 import host_memory  # noqa: E402
from m4 import sharding  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a finished main-job workdir")
  parser.add_argument("--out", required=True, help="a new directory for the stage's runs")
  parser.add_argument("--cached_views", default=None,
                      help="comma-separated protocols (default: the config's)")
  args = parser.parse_args()
  host_memory.keep_freed_memory()  # As m4.main: before the backend starts.
  sharding.use_cpu_devices(0)
  from m4.jobs import quickstart, transfer  # pylint: disable=import-outside-toplevel

  config = runpy.run_path(os.path.join(REPO, "configs/quickstart.py"))["get_config"]()
  stage = quickstart.stage_config(config, "transfer", args.workdir)
  if args.cached_views is not None:
    stage.cached_views = tuple(p for p in args.cached_views.split(",") if p)
  t = time.time()
  summary = transfer.run(stage, args.out)
  print(json.dumps({"cached_views": list(stage.cached_views),
                    "seconds": round(time.time() - t, 1),
                    "verdicts": summary["verdicts"]}), flush=True)


if __name__ == "__main__":
  main()
