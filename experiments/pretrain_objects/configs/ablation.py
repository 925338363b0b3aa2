"""The ablations' base: configs/pretrain/scenes_tiny.py:quick on the old quickstart's data.

The E-runs of ../README.md trained on the shards and tokenizers of a main-job
workdir made before this issue (4000 scenes, the quick tokenizers) with
pixel shards added (`configs/pretokenize/scenes.py`, default `tokenize`).
ROOT is that workdir; each run is this config plus the overrides in the
README's table, e.g.

    python -m m4.main --config=experiments/pretrain_objects/configs/ablation.py \
        --workdir=workdirs/ablations/e13 --config.data.batch_size=32 \
        --config.total_steps=900 --config.optimizer.lr=3e-3 \
        --config.masking.mixture.rgb2all.weight=3.0

The data fields are ROOT's (its config.json) when ROOT exists, else those
configs/quickstart.py writes (the same 4000 / 256 / 256 scenes).
"""

import json
import os

from m4 import config_files

ROOT = os.environ.get("M4_ABLATION_ROOT", "workdirs/quickstart")
TOKENS = os.environ.get("M4_ABLATION_TOKENS", os.path.join(ROOT, "tokens"))


def get_config(arg=None):
  """`quick` (the E-runs' 3+3 blocks) or `full` (scenes_tiny's 4+4)."""
  variant = config_files.variant(arg, __file__, ("quick", "full"))
  c = config_files.load(__file__, "../../../configs/pretrain/scenes_tiny.py").get_config(variant)
  recorded = os.path.join(ROOT, "config.json")
  if os.path.exists(recorded):
    with open(recorded) as f:
      data = json.load(f)["stages"]["tokens"]["data"]
  else:
    quickstart = config_files.load(__file__, "../../../configs/quickstart.py").get_config()
    data = quickstart.stages.tokens.data.to_dict()
  data["dir"] = os.path.join(ROOT, "data")
  c.data.update({k: v for k, v in data.items() if k in c.data})
  c.data.batch_size = 64
  if variant == "quick":  # The E-runs' schedule (the quickstart's before it went to 1800 steps).
    c.total_steps, c.checkpoint_every, c.eval.every = 1200, 400, 400
  c.tokens.dir = TOKENS
  c.tokenizers.update(dict(
      rgb=os.path.join(ROOT, "tok_rgb"), depth=os.path.join(ROOT, "tok_depth"),
      semseg=os.path.join(ROOT, "tok_semseg"),
      caption=os.path.join(ROOT, "tok_caption/wordpiece_scenes.json")))
  return c
