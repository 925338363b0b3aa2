"""The trainer registry: `config.trainer` names one job.

Each trainer is a module with `run(config, workdir) -> dict`, the returned dict
being a short summary (figures and paths of pictures) that the quickstart
prints. Modules are imported only when their job runs.
"""

import importlib

TRAINERS = {
    "quickstart": "m4.trainers.quickstart",
    "scenes": "m4.trainers.scenes",
    "tokenizer": "m4.trainers.tokenizer",
    "text_tokenizer": "m4.trainers.text_tokenizer",
    "pretokenize": "m4.trainers.pretokenize",
    "pretrain": "m4.trainers.pretrain",
    "generate": "m4.trainers.generate",
    "transfer": "m4.trainers.transfer",
}


def get(name: str):
  """Returns the `run` function of the trainer called `name`."""
  if name not in TRAINERS:
    raise KeyError(f"unknown trainer {name!r} (config.trainer); known: {sorted(TRAINERS)}")
  return importlib.import_module(TRAINERS[name]).run
