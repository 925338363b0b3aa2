"""A transfer run whose fine-tunings train the head alone for their first K steps (LP-FT).

    HEAD_FIRST=50 M4_QUICK_ROOT=workdirs/quickstart python experiments/transfer_scenes/head_first.py \
        --config=experiments/transfer_scenes/configs/quick_model.py:count \
        --config.protocols='("finetune",)' --config.cached_views='("probe","finetune")' \
        --config.data.eval_split=validation --workdir=W

`m4.main` with one change to every optimizer the run builds: the updates of
the backbone's parameters are multiplied by 0 until step K (`HEAD_FIRST`; 0:
the run as `m4.main` makes it), so the head is fitted on the frozen encoder
first and then everything trains (Kumar et al. 2022's linear probe, then
fine-tune, in one schedule: the backbone's AdamW moments gather during the
first K steps, its weight decay waits with its updates). Both arms get it.
An experiment, not an m4 option (experiments/transfer_scenes/README.md,
"Head first").
"""

import os

import jax.numpy as jnp
import optax

from m4 import main
from m4 import optim

HEAD_FIRST = int(os.environ.get("HEAD_FIRST", "0"))
_make = optim.make


def _make_head_first(config):
  tx, schedule = _make(config)
  if HEAD_FIRST:
    backbone = lambda params: optim.rule_tree((("backbone/.*", True),), params, False)
    # Updates times 0 before step HEAD_FIRST, times 1 from it.
    start = optax.scale_by_schedule(lambda count: (count >= HEAD_FIRST).astype(jnp.float32))
    tx = optax.chain(tx, optax.masked(start, backbone))
  return tx, schedule


optim.make = _make_head_first

if __name__ == "__main__":
  main.run()
