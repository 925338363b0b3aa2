"""The whole m4 pipeline on the embedded scenes dataset, stage after stage.

`config.stages` maps `name -> stage config` and `config.order` lists the names
in the order to run (ConfigDict sorts its keys); each stage config names its
own `job` and runs in `WORKDIR/<name>`. A stage whose workdir
holds a summary.json is done and skipped, so re-running resumes. The string
`{root}` in any stage field is replaced by WORKDIR, which is how a stage reads
what an earlier one wrote (e.g. `data.dir = "{root}/data"`).
"""

import os
import time

import ml_collections
from absl import logging

from m4 import jobs
from m4 import workdir as workdir_lib


def _resolve(node, root: str):
  """Replaces `{root}` in every string of a (nested) config."""
  if isinstance(node, ml_collections.ConfigDict):
    out = ml_collections.ConfigDict()
    for k, v in node.items():
      out[k] = _resolve(v, root)
    return out
  if isinstance(node, str):
    return node.replace("{root}", root)
  if isinstance(node, (list, tuple)):
    return type(node)(_resolve(v, root) for v in node)
  return node


def stage_config(config, name: str, workdir: str):
  """Stage `name` of a quickstart config as it runs in `workdir` (`{root}` replaced)."""
  return _resolve(config.stages[name], os.path.abspath(workdir))


def run(config, workdir: str) -> dict:
  root = os.path.abspath(workdir)
  summaries = {}
  t_start = time.time()
  names = list(config.order)
  for name in names:
    workdir_lib.require(name in config.stages, "order", f"stage {name!r} is not in config.stages")
  workdir_lib.write_config(config, root)
  for i, name in enumerate(names):
    stage = stage_config(config, name, root)
    stage_dir = os.path.join(root, name)
    if workdir_lib.is_done(stage_dir):
      logging.info("quickstart: stage %s already done, skipping.", name)
      print(f"[quickstart {i + 1}/{len(names)}] {name}: done before, skipped", flush=True)
      summaries[name] = workdir_lib.read_summary(stage_dir)
      continue
    print(f"[quickstart {i + 1}/{len(names)}] {name}: job {stage.job} in {stage_dir}",
          flush=True)
    t0 = time.time()
    workdir_lib.check_workdir(stage_dir)  # Each stage writes its config.json once checked.
    summary = dict(jobs.get(stage.job)(stage, stage_dir) or {})
    summary.setdefault("seconds", round(time.time() - t0, 1))
    summaries[name] = workdir_lib.write_summary(stage_dir, summary)
  total = {"stages": summaries, "total_seconds": round(time.time() - t_start, 1)}
  workdir_lib.write_json(os.path.join(root, "quickstart_summary.json"), total)
  return total
