"""The main job with 4M-21's boxes, palette and metadata texts: steerable generation.

    python -m m4.main --config=experiments/steerable_generation/configs/quickstart_seq.py \
        --workdir=workdirs/quickstart_seq

configs/quickstart.py (quick) with the scenes rendered with their `boxes`,
`palette` and `metadata` extras (the same scenes: the renderer is
deterministic and those extras draw no random numbers), written as texts
(m4.data.scene_sequences) and tokenized with one WordPiece vocabulary shared
with the caption (the tok_caption stage: configs/tokenizers/caption_scenes.py:
shared), and pretrained with them among the inputs and targets (the same
model, steps, 64 + 64 tokens and mixture: equal compute with the main job).
Every new modality is a registry entry (m4/modalities.py), a tokenizer config
and data; nothing in m4/models/ knows them.

Besides the main job's stages, five generation stages draw semseg (then RGB
from it, chained) on 256 test scenes with the same decoding (MaskGIT, 8
steps, temperature 0.5, guidance 2 on the condition): from the boxes, from
the metadata, from the palette (RGB only), from the caption (a text that
names every object but not where it is: the baseline) and from the RGB (the
reference: everything is in the picture). Each semantic map is scored
against the scene's boxes (hit rate at IoU >= 0.5), count and caption, each
RGB against the palette (m4.generation.quality), beside the tokenizers'
reconstruction of the truth (the ceiling). The rgb -> all stage also writes
boxes and metadata from RGB.

`full`: the same at configs/quickstart.py:full's size (16k scenes, the 4+4
model, 6000 steps, 500 test scenes for rgb -> all), with one more mixture
component, `text2all` (inputs from the texts only, every target; weight 1 beside
"RGB to all" 3 and "all to all" 1): at the quick size, without it, semseg
drawn from boxes alone had no objects (experiments/steerable_generation/).
No transfer stage.
"""

from m4 import config_files

_ROOT = "../../../configs"
EXTRAS = ("boxes", "palette", "metadata")
TEXT_TOKENIZER = "{root}/tok_caption/wordpiece_scenes21.json"
# Steering stages: name -> (given texts, targets).
STEERING = {"gen_boxes": (("boxes",), ("semseg", "rgb")),
            "gen_metadata": (("metadata",), ("semseg", "rgb")),
            "gen_palette": (("palette",), ("rgb",)),
            "gen_caption": (("caption",), ("semseg", "rgb")),
            "gen_rgb": (("rgb_pixels",), ("semseg",))}
STEERING_SAMPLES = 256  # Test scenes of each steering stage.


def _config(path: str, arg=None):
  return config_files.load(__file__, f"{_ROOT}/{path}").get_config(arg)


def text2all(names, targets) -> dict:
  """A mixture component that steers: inputs drawn from the texts only
  (caption, boxes, palette, metadata; alphas 0.5), every target (0.5)."""
  return dict(weight=1.0,
              input_alphas={n: 0.5 if n in ("caption",) + EXTRAS else 0.0 for n in names},
              target_alphas={n: 0.5 if n in targets else 0.0 for n in names},
              keep={n: "random" for n in ("caption",) + EXTRAS})


def steering_stage(generate, inputs, targets):
  """A generation stage drawing `targets` (chained) from `inputs` on
  STEERING_SAMPLES test scenes, guided (scale 2) on the inputs; its data,
  init and tokenizers are the `generate` stage's (shared, not copied)."""
  common = config_files.load(__file__, f"{_ROOT}/generate/common.py")
  gen = common.base(inputs=inputs, targets=targets, chained=True)
  for key in ("data", "init", "tokenizers"):
    gen[key] = generate[key]
  gen.num_samples = STEERING_SAMPLES
  for target in targets:
    gen.decoding[target].cfg_scale = 2.0
    gen.decoding[target].cfg_conditions = inputs
  return gen


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("quick", "full"))
  quickstart = config_files.load(__file__, f"{_ROOT}/quickstart.py")
  c = quickstart.get_config(variant)
  data = c.stages.data.data
  data.extras = EXTRAS
  texts = {n: TEXT_TOKENIZER for n in ("caption",) + EXTRAS}
  tokenizers = {**quickstart.TOKENIZERS, **texts}

  for name in ("tok_rgb", "tok_depth", "tok_semseg", "generate", "transfer"):
    c.stages[name].data.extras = EXTRAS
  shared = _config("tokenizers/caption_scenes.py", "shared")
  tok_caption = c.stages.tok_caption
  # The caption and these three texts only (the vocabulary of the runs below;
  # :shared also holds the instances).
  tok_caption.data.update(dict(extras=EXTRAS, modalities=("caption", "semseg") + EXTRAS))
  tok_caption.shared_with = EXTRAS
  tok_caption.tokenizer.name = shared.tokenizer.name

  c.stages.tokens.data.extras = EXTRAS
  c.stages.tokens.tokenize = tuple(c.stages.tokens.tokenize) + EXTRAS
  c.stages.tokens.tokenizers.update(texts)

  tiny = config_files.load(__file__, f"{_ROOT}/pretrain/scenes_tiny.py")
  pretrain = c.stages.pretrain
  pretrain.tokenizers.update(tokenizers)
  pretrain.masking = tiny.mixture(tiny.NAMES + EXTRAS)
  pretrain.model.encoder_modalities = tiny.NAMES + EXTRAS
  pretrain.model.decoder_modalities = tiny.TARGETS + EXTRAS

  generate = c.stages.generate
  generate.tokenizers.update(tokenizers)
  generate.targets = tuple(generate.targets) + ("boxes", "metadata")
  common = config_files.load(__file__, f"{_ROOT}/generate/common.py")
  for name in ("boxes", "metadata"):
    generate.decoding[name] = dict(common.CAPTION_DECODING)

  if variant == "full":  # The steering component; no transfer stage (hours at this size).
    pretrain.masking.mixture.text2all = text2all(pretrain.masking.modalities,
                                                 pretrain.model.decoder_modalities)
    c.order = tuple(n for n in c.order if n != "transfer")
    del c.stages["transfer"]
  for stage, (inputs, targets) in STEERING.items():
    c.stages[stage] = steering_stage(generate, inputs, targets)
  c.order = tuple(c.order[:c.order.index("generate") + 1]) + tuple(STEERING) + tuple(
      c.order[c.order.index("generate") + 1:])
  return c
