"""The main job with surface normals and edges added: 4M-21's claim at the main job's scale.

    python -m m4.main --config=experiments/pretrain_geometry/configs/quickstart_geometry.py \
        --workdir=workdirs/quickstart_geometry

configs/quickstart.py (its default, quick variant) with three changes, so
its figures compare one to one with the main job's as recorded then (1200
pretraining steps, one shared fine-tuning rate; pinned below): the scenes are rendered
with their geometry extras (the same scenes: the renderer is deterministic
and the extras draw no random numbers), two more quick VQ tokenizers
(configs/tokenizers/{normals,edges}_scenes.py:quick) tokenize them into the
shards, and the pretraining is configs/pretrain/scenes_geometry.py:quick
(the same model, steps and mixture, normals and edges among the inputs and
targets: equal compute). Generation also decodes normals and edges from RGB.
"""

from m4 import config_files

_ROOT = "../../../configs"
EXTRAS = ("normals", "edges")


def _config(path: str, arg=None):
  return config_files.load(__file__, f"{_ROOT}/{path}").get_config(arg)


def add_tokenizer_stages(c, names):
  """Stages tok_<name> (configs/tokenizers/<name>_scenes.py:quick on the
  chain's data) before the `tokens` stage of the chain config `c`."""
  for name in names:
    stage = _config(f"tokenizers/{name}_scenes.py", "quick")
    stage.data.update(c.stages.data.data)
    c.stages[f"tok_{name}"] = stage
  c.order = tuple(c.order[:c.order.index("tokens")]) + tuple(f"tok_{n}" for n in names) + tuple(
      c.order[c.order.index("tokens"):])


def get_config(arg=None):
  config_files.variant(arg, __file__, ("quick",))
  quickstart = config_files.load(__file__, f"{_ROOT}/quickstart.py")
  c = quickstart.get_config("quick")
  data = c.stages.data.data
  data.extras = EXTRAS
  tokenizers = {**quickstart.TOKENIZERS, **{n: f"{{root}}/tok_{n}" for n in EXTRAS}}

  add_tokenizer_stages(c, EXTRAS)

  for name in ("tok_rgb", "tok_depth", "tok_semseg", "tok_caption", "generate", "transfer"):
    c.stages[name].data.extras = EXTRAS
  c.stages.tokens.data.extras = EXTRAS
  c.stages.tokens.tokenize = tuple(c.stages.tokens.tokenize) + EXTRAS
  c.stages.tokens.tokenizers.update({n: tokenizers[n] for n in EXTRAS})

  pretrain = _config("pretrain/scenes_geometry.py", "quick")
  # As recorded (../README.md): the main job of 2026-12-04, 1200 pretraining steps and
  # one shared fine-tuning rate (the quickstart now runs 1800 and sweeps semseg's).
  pretrain.total_steps, pretrain.checkpoint_every, pretrain.eval.every = 1200, 400, 400
  c.stages.transfer.task_protocols = {}
  c.stages.transfer.cached_views = ("probe",)  # As recorded: fine-tunings read the loader.
  pretrain.data.update(data)
  pretrain.tokens.dir = "{root}/tokens"
  pretrain.tokenizers.update(tokenizers)
  c.stages.pretrain = pretrain

  generate = c.stages.generate
  generate.targets = tuple(generate.targets) + EXTRAS
  generate.tokenizers.update({n: tokenizers[n] for n in EXTRAS})
  for name in EXTRAS:
    generate.decoding[name] = generate.decoding.depth.to_dict()
  return c
