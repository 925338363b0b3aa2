"""Evaluators: one small module per metric family, each `Evaluator(**cfg).run(model)`.

    ev = evaluators.get("segmentation")(task=task, data=config.data, split="test",
                                         seed=0, inputs=encoder_inputs)
    metrics = ev.run(model)        # {"miou": ..., "pixel_accuracy": ...}
    ev.examples                    # the first samples' inputs, targets, predictions

Transfer tasks pick theirs by kind (m4.models.transfer.TASK_KINDS).
"""

import importlib

EVALUATORS = {
    "classification": "m4.evaluators.classification",
    "segmentation": "m4.evaluators.segmentation",
    "depth": "m4.evaluators.depth",
}


def get(kind: str):
  """The Evaluator class for a task kind."""
  if kind not in EVALUATORS:
    raise KeyError(f"no evaluator for {kind!r}; known: {sorted(EVALUATORS)}")
  return importlib.import_module(EVALUATORS[kind]).Evaluator
