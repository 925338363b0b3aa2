"""The job registry: `config.job` names one job.

A job trains a model (pretrain, transfer, tokenizer, text_tokenizer) or does
something else a run needs (scenes data, pretokenize, generate, quickstart).
Each is a module with `run(config, workdir) -> dict`, the returned dict
being a short summary (figures and paths of pictures) that the quickstart
prints. Modules are imported only when their job runs.
"""

import importlib

JOBS = {
    "quickstart": "m4.jobs.quickstart",
    "scenes": "m4.jobs.scenes",
    "tokenizer": "m4.jobs.tokenizer",
    "text_tokenizer": "m4.jobs.text_tokenizer",
    "pretokenize": "m4.jobs.pretokenize",
    "pretrain": "m4.jobs.pretrain",
    "generate": "m4.jobs.generate",
    "transfer": "m4.jobs.transfer",
}


def get(name: str):
  """Returns the `run` function of the job called `name`."""
  if name not in JOBS:
    raise KeyError(f"unknown job {name!r} (config.job); known: {sorted(JOBS)}")
  return importlib.import_module(JOBS[name]).run
