"""4M-21-style pretraining on the scenes: scenes_tiny's model and recipe, plus surface normals and edges.

    python -m m4.main --config=configs/pretrain/scenes_geometry.py --workdir=workdirs/pretrain/scenes_geometry
    python -m m4.main --config=configs/pretrain/scenes_geometry.py:quick --workdir=DIR   # quickstart size

Everything is configs/pretrain/scenes_tiny.py's (width, depth, token
budgets, optimizer, steps, the "RGB to all" 3 : 1 "all to all" mixture with
condition dropout) except the modalities: normals and edges (registry
entries of m4/modalities.py, tokenized by configs/tokenizers/
{normals,edges}_scenes.py) join every other modality as inputs and targets.
So at equal compute (the same steps and 64 + 64 tokens per sample) each
original modality gets a smaller share of the token budget: 4M-21's claim
is that it loses nothing for it. Needs token shards of the scenes rendered
with their geometry extras (configs/pretokenize/scenes.py with `normals`
and `edges` added); experiments/pretrain_geometry/ runs the whole chain and
the comparison.
"""

from m4 import config_files

_TINY = config_files.load(__file__, "scenes_tiny.py")
NAMES = _TINY.NAMES + ("normals", "edges")
TARGETS = _TINY.TARGETS + ("normals", "edges")


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("full", "quick"))
  c = _TINY.get_config(variant)
  c.data.dir = "workdirs/data/scenes64_geometry"
  c.data.extras = ("normals", "edges")
  c.tokens.dir = "workdirs/tokens/scenes64_geometry"
  c.tokenizers.update(dict(normals="vq_normals", edges="vq_edges"))
  c.masking = _TINY.mixture(NAMES)
  c.model.encoder_modalities = NAMES
  c.model.decoder_modalities = TARGETS
  return c
