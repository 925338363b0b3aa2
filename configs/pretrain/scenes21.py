"""4M-21-style pretraining on the scenes: every modality the scenes render.

    python -m m4.main --config=configs/pretrain/scenes21.py --workdir=workdirs/pretrain/scenes21
    python -m m4.main --config=configs/pretrain/scenes21.py:quick --workdir=DIR   # quickstart size

configs/pretrain/scenes_geometry.py (scenes_tiny's model, token budgets,
optimizer, steps and "RGB to all" 3 : 1 "all to all" mixture, with normals
and edges) plus 4M-21's sequence modalities: boxes, palette, metadata and
instances as text in the caption's shared WordPiece vocabulary
(m4.data.scene_sequences; configs/tokenizers/caption_scenes.py:shared).
Eleven modalities, ten of them targets, in the same 64 + 64 tokens per
sample: equal compute with scenes_tiny. Needs token shards of the scenes
rendered with every extra; experiments/pretrain_scenes21/ runs the whole
chain and compares it with the main job.
"""

from m4 import config_files
from m4.data import scene_sequences

_TINY = config_files.load(__file__, "scenes_tiny.py")
_GEOMETRY = config_files.load(__file__, "scenes_geometry.py")
TEXTS = scene_sequences.KINDS  # boxes, palette, metadata, instances.
NAMES = _GEOMETRY.NAMES + TEXTS
TARGETS = _GEOMETRY.TARGETS + TEXTS
EXTRAS = ("normals", "edges") + scene_sequences.EXTRAS  # The scenes extras they are made from.


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("full", "quick"))
  c = _GEOMETRY.get_config(variant)
  c.data.dir = "workdirs/data/scenes64_21"
  c.data.extras = EXTRAS
  c.tokens.dir = "workdirs/tokens/scenes64_21"
  c.tokenizers.update({n: "wordpiece_scenes21" for n in ("caption",) + TEXTS})
  c.masking = _TINY.mixture(NAMES)
  c.model.encoder_modalities = NAMES
  c.model.decoder_modalities = TARGETS
  return c
