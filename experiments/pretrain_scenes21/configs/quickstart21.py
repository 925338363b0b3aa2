"""The main job with every modality the scenes render: 4M-21's claim at the main job's size.

    python -m m4.main --config=experiments/pretrain_scenes21/configs/quickstart21.py \
        --workdir=workdirs/quickstart21

configs/quickstart.py (quick) with the scenes rendered with every extra (the
same scenes: the renderer is deterministic and the extras draw no random
numbers), the quick normals and edges VQ tokenizers
(configs/tokenizers/{normals,edges}_scenes.py:quick), one WordPiece
vocabulary for the caption and the boxes, palette, metadata and instances
texts (configs/tokenizers/caption_scenes.py:shared), and pretraining on
all eleven modalities (configs/pretrain/scenes21.py:quick: the same model,
1800 steps and 64 + 64 tokens: equal compute). The generate stage also
draws normals, edges and the four texts from RGB; the transfer stage is
the main job's. Everything else is the main job's, so its rows compare one
to one with it (and with experiments/steerable_generation's texts-only run).

`boxes`: the same with the boxes steerable as a map, as
experiments/steerable_generation/configs/steering_quick.py:boxmap2semseg
does at the main job's size: `box_map` (the boxes text drawn as a class map,
tokenized by the run's semseg tokenizer) among the inputs, the component
that gives it whole and asks for every semseg token (weight 1 beside
"RGB to all" 3 and "all to all" 1), and a gen_boxes stage drawing semseg,
then RGB, from the map on 256 test scenes (MaskGIT 8 steps, guidance 2).
"""

import copy

from m4 import config_files

_ROOT = "../../../configs"
GEOMETRY = ("normals", "edges")


def _config(path: str, arg=None):
  return config_files.load(__file__, f"{_ROOT}/{path}").get_config(arg)


def _steer_boxes(c, texts):
  """box_map, its boxmap2semseg component and the gen_boxes stage (see
  `boxes` in the module docstring)."""
  steering = config_files.load(__file__, "../../steerable_generation/configs/steering_quick.py")
  seq = config_files.load(__file__, "../../steerable_generation/configs/quickstart_seq.py")
  gen = seq.steering_stage(c.stages.generate, ("box_map",), ("semseg", "rgb"))
  gen.tokenizers = copy.deepcopy(gen.tokenizers)  # add_box_map adds to them; generate keeps its own.
  c.stages.gen_boxes = gen
  at = c.order.index("generate") + 1
  c.order = tuple(c.order[:at]) + ("gen_boxes",) + tuple(c.order[at:])
  steering.add_box_map(c)
  masking = c.stages.pretrain.masking
  masking.mixture.boxmap2semseg = steering.whole(masking.modalities, "box_map", "semseg", texts)


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("quick", "boxes"))
  quickstart = config_files.load(__file__, f"{_ROOT}/quickstart.py")
  scenes21 = config_files.load(__file__, f"{_ROOT}/pretrain/scenes21.py")
  common = config_files.load(__file__, f"{_ROOT}/generate/common.py")
  c = quickstart.get_config("quick")
  data = c.stages.data.data
  data.extras = scenes21.EXTRAS
  for name in ("tok_rgb", "tok_depth", "tok_semseg", "tokens", "pretrain", "generate", "transfer"):
    c.stages[name].data.extras = scenes21.EXTRAS
  c.stages.transfer.cached_views = ("probe",)  # As recorded: fine-tunings read the loader.

  geometry = config_files.load(__file__, "../../pretrain_geometry/configs/quickstart_geometry.py")
  geometry.add_tokenizer_stages(c, GEOMETRY)  # tok_normals, tok_edges.

  shared = _config("tokenizers/caption_scenes.py", "shared")
  tok_caption = c.stages.tok_caption
  tok_caption.data.update(dict(extras=scenes21.EXTRAS, modalities=shared.data.modalities))
  tok_caption.shared_with = shared.shared_with
  tok_caption.tokenizer.name = shared.tokenizer.name
  texts = {n: "{root}/tok_caption/wordpiece_scenes21.json" for n in ("caption",) + scenes21.TEXTS}
  tokenizers = {**quickstart.TOKENIZERS, **{n: f"{{root}}/tok_{n}" for n in GEOMETRY}, **texts}

  c.stages.tokens.tokenize = tuple(c.stages.tokens.tokenize) + GEOMETRY + scenes21.TEXTS
  c.stages.tokens.tokenizers.update(tokenizers)

  pretrain = c.stages.pretrain
  pretrain.tokenizers.update(tokenizers)
  pretrain.masking = scenes21.get_config("quick").masking
  pretrain.model.encoder_modalities = scenes21.NAMES
  pretrain.model.decoder_modalities = scenes21.TARGETS

  generate = c.stages.generate
  generate.tokenizers.update(tokenizers)
  generate.targets = tuple(generate.targets) + GEOMETRY + ("boxes", "metadata", "instances")
  for name in GEOMETRY:
    generate.decoding[name] = generate.decoding.depth.to_dict()
  for name in ("boxes", "metadata", "instances"):
    generate.decoding[name] = dict(common.CAPTION_DECODING)
  if variant == "boxes":
    _steer_boxes(c, ("caption",) + scenes21.TEXTS)
  return c
