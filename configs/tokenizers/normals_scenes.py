"""VQ tokenizer for surface normals on the scenes dataset: 64 px -> 8x8 tokens, 1024 codes.

    python -m m4.main --config=configs/tokenizers/normals_scenes.py --workdir=workdirs/tokenizers/vq_normals
    python -m m4.main --config=configs/tokenizers/normals_scenes.py:quick --workdir=DIR

Camera-space unit normals (4M-21's geometry, rendered exactly by
m4.data.scene_extras; sky = 0), on the shared 64 px scenes rendered with
their geometry extras into their own directory. Loss: 1 - cosine over
surface pixels plus a validity (sky) channel. Bar (issue 13): mean angular
error <= 10 degrees after reconstruction. Results: experiments/tokenizers/.
"""

from m4 import config_files

_COMMON = config_files.load(__file__, "common.py")
GEOMETRY_DATA_DIR = "workdirs/data/scenes64_geometry"  # The scenes with normals and edges.


def get_config(arg=None):
  c = _COMMON.vq_scenes(__file__, "normals", arg, num_steps=1000)
  c.data.dir = GEOMETRY_DATA_DIR
  c.data.extras = ("normals", "edges")
  c.io.loss_weights = {"angle": 1.0, "valid": 0.1}
  return c
