"""Does box steering fail for want of practice or of representation? Quick-size ablations.

    python -m m4.main --config=experiments/steerable_generation/configs/steering_quick.py:VARIANT \
        --workdir=workdirs/steering_quick_VARIANT

quickstart_seq.py (quick: the main job's model, 1800 steps, its data,
tokenizers and token shards, with boxes, palette and metadata texts) with
one more mixture component, then semseg drawn from the boxes (and, as the
reference, from RGB) on 256 test scenes, MaskGIT as in quickstart_seq:

  text2all      inputs from the texts only, every target (weight 1; the
                `full` recipe's component at the quick size);
  boxes2semseg  the boxes text whole in, every semseg token out (weight 1):
                the most practice the boxes -> semseg mapping can get; if
                the model cannot learn it from this, the texts' form, not
                their share of the mixture, is what fails;
  box_map       the same boxes as an image too (`box_map`: the boxes text
                drawn as a class map, tokenized by the run's semseg VQ
                tokenizer), an input beside the others in the same mixture;
                semseg drawn from the map;
  boxmap2semseg box_map with boxes2semseg's component, the map in place of
                the text: the two differ in the boxes' form alone.

No transfer and no other steering stage: the box hit rate is the figure.
"""

from m4 import config_files

_TINY = config_files.load(__file__, "../../../configs/pretrain/scenes_tiny.py")

VARIANTS = ("text2all", "boxes2semseg", "box_map", "boxmap2semseg")


def _add_box_map(c):
  """box_map tokenized into the shards, an encoder input, and the input the
  gen_boxes stage steers with."""
  semseg = "{root}/tok_semseg"
  c.stages.tokens.tokenize = tuple(c.stages.tokens.tokenize) + ("box_map",)
  c.stages.tokens.tokenizers.box_map = semseg
  pretrain = c.stages.pretrain
  pretrain.tokenizers.box_map = semseg
  pretrain.model.encoder_modalities = tuple(pretrain.model.encoder_modalities) + ("box_map",)
  pretrain.masking = _TINY.mixture(pretrain.model.encoder_modalities)
  gen = c.stages.gen_boxes
  gen.tokenizers.box_map = semseg
  gen.inputs = ("box_map",)
  for target in gen.targets:
    gen.decoding[target].cfg_conditions = ("box_map",)


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, VARIANTS)
  seq = config_files.load(__file__, "quickstart_seq.py")
  c = seq.get_config("quick")
  if variant in ("box_map", "boxmap2semseg"):
    _add_box_map(c)
  mixture = c.stages.pretrain.masking.mixture
  names = c.stages.pretrain.masking.modalities
  if variant == "text2all":
    mixture.text2all = seq.text2all(names, c.stages.pretrain.model.decoder_modalities)
  elif variant in ("boxes2semseg", "boxmap2semseg"):
    given = "boxes" if variant == "boxes2semseg" else "box_map"
    mixture[variant] = dict(
        weight=1.0, input_alphas={n: float(n == given) for n in names},
        target_alphas={n: float(n == "semseg") for n in names},
        keep={n: "all" if n == given else "random" for n in ("caption",) + seq.EXTRAS})
  c.order = tuple(n for n in c.order if n not in ("generate", "transfer") and not (
      n.startswith("gen_") and n not in ("gen_boxes", "gen_rgb")))
  for name in set(c.stages) - set(c.order):
    del c.stages[name]
  return c
