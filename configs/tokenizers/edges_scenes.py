"""VQ tokenizer for edges on the scenes dataset: 64 px -> 8x8 tokens, 1024 codes.

    python -m m4.main --config=configs/tokenizers/edges_scenes.py --workdir=workdirs/tokenizers/vq_edges
    python -m m4.main --config=configs/tokenizers/edges_scenes.py:quick --workdir=DIR

Occlusion and shape boundaries ({0, 1} maps, 4M-21's geometric edges,
rendered exactly by m4.data.scene_extras), on the same scenes as
normals_scenes.py. Loss: binary cross-entropy per pixel. Bar (issue 13):
pixel F1 >= 0.80 after reconstruction. Results: experiments/tokenizers/.
"""

from m4 import config_files

_COMMON = config_files.load(__file__, "common.py")
_NORMALS = config_files.load(__file__, "normals_scenes.py")


def get_config(arg=None):
  c = _COMMON.vq_scenes(__file__, "edges", arg, num_steps=1000)
  c.data.dir = _NORMALS.GEOMETRY_DATA_DIR
  c.data.extras = ("normals", "edges")
  c.io.loss_weights = {"bce": 1.0, "pos_weight": 3.0}  # About 10 % of pixels are edges.
  return c
