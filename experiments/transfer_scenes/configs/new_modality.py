"""A new input modality at fine-tune time: semseg from RGB, RGB + depth, RGB + normals.

    M4_QUICK_ROOT=workdirs/quickstart M4_GEOMETRY_ROOT=workdirs/geometry_quick \
    python -m m4.main --config=experiments/transfer_scenes/configs/new_modality.py \
        --workdir=workdirs/transfer/new_modality

4M's and MultiMAE's claim: a pretrained model takes an input it was never
pretrained on and still beats the same model from scratch. The model is the
main job's (M4_QUICK_ROOT: `configs/quickstart.py`; RGB pixels and depth
tokens among its inputs, never normals). Normals are tokenized by a quick
normals tokenizer trained on the geometry scenes (M4_GEOMETRY_ROOT/tok_normals:
`configs/tokenizers/normals_scenes.py:quick`), which are also the transfer
data (M4_GEOMETRY_ROOT/data: the main job's scene settings with the normals
and edges extras). The normals' token and modality embeddings start at
random in both arms (`transfer.new_inputs`) and fine-tune at the full rate.
The quickstart's transfer scale: 10 % labels, 150 steps, each arm's probe
rate swept on validation, fine-tuning at 3e-3; 3 seeds on the test split.
"""

import os

from m4 import config_files

QUICK_ROOT = os.environ.get("M4_QUICK_ROOT", "workdirs/quickstart")
GEOMETRY_ROOT = os.environ.get("M4_GEOMETRY_ROOT", "workdirs/geometry_quick")
_SCENES = "../../../configs/transfer/scenes.py"


def get_config(arg=None):
  config_files.variant(arg, __file__, ("default",))
  scenes = config_files.load(__file__, _SCENES)
  c = scenes.get_config("quick")
  tasks = scenes.get_config().tasks
  c.tasks = {"semseg": tasks.semseg.to_dict(), "semseg_rgbd": tasks.semseg_rgbd.to_dict(),
             "semseg_rgbn": dict(tasks.semseg_rgbd.to_dict(), inputs=("rgb_pixels", "normals"))}
  c.task_protocols = {}  # As recorded: fine-tuning at the quick config's 3e-3 for every task.
  c.seeds = (0, 1, 2)
  c.baselines = ()
  c.cached_views = ("probe",)  # As recorded: fine-tunings and conv nets read the loader.
  c.init = os.path.join(QUICK_ROOT, "pretrain")
  c.data.dir = os.path.join(GEOMETRY_ROOT, "data")
  c.tokenizers.depth = os.path.join(QUICK_ROOT, "tok_depth")
  c.tokenizers.normals = os.path.join(GEOMETRY_ROOT, "tok_normals")
  return c
