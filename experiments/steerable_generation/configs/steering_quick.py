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
                the text: the two differ in the boxes' form alone;
  count_chain   boxmap2semseg and one more component, the metadata text
                whole in and the boxes text out (weight 1): the model learns
                to write boxes for a count, so count_chain.py can steer the
                count through metadata -> boxes -> box map -> semseg.

Single-task controls: the same model, data and 1800 steps, the mixture
replaced by one component (the condition whole in, every token of the
target out; no other inputs or targets), so the mapping gets every step:

  boxes_alone     boxes text -> semseg;
  box_map_alone   box map -> semseg;
  metadata_alone  metadata text -> semseg (the count steers);
  palette_alone   palette text -> rgb.

Their held-out loss is that mapping's alone (no cross-modal evaluation from
RGB: the model never sees it); each keeps the one steering stage it serves
(its chained RGB, which these models never learned to draw, is noise).

No transfer and no other steering stage: the box hit rate is the figure.
"""

from m4 import config_files

_TINY = config_files.load(__file__, "../../../configs/pretrain/scenes_tiny.py")

VARIANTS = ("text2all", "boxes2semseg", "box_map", "boxmap2semseg", "count_chain")
# Single-task controls: variant -> (the condition, the target, the steering stage kept).
ALONE = {"boxes_alone": ("boxes", "semseg", "gen_boxes"),
         "box_map_alone": ("box_map", "semseg", "gen_boxes"),
         "metadata_alone": ("metadata", "semseg", "gen_metadata"),
         "palette_alone": ("palette", "rgb", "gen_palette")}


def add_box_map(c):
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


def whole(names, given, target, texts) -> dict:
  """A component: `given` whole in, every token of `target` out."""
  return dict(weight=1.0, input_alphas={n: float(n == given) for n in names},
              target_alphas={n: float(n == target) for n in names},
              keep={n: "all" if n == given else "random" for n in texts})


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, VARIANTS + tuple(ALONE))
  seq = config_files.load(__file__, "quickstart_seq.py")
  c = seq.get_config("quick")
  if variant in ("box_map", "boxmap2semseg", "count_chain", "box_map_alone"):
    add_box_map(c)
  pretrain = c.stages.pretrain
  mixture = pretrain.masking.mixture
  names = pretrain.masking.modalities
  texts = ("caption",) + seq.EXTRAS
  steering = ("gen_boxes", "gen_rgb")
  if variant == "text2all":
    mixture.text2all = seq.text2all(names, pretrain.model.decoder_modalities)
  elif variant in ("boxes2semseg", "boxmap2semseg", "count_chain"):
    given, name = ("boxes", "boxes2semseg") if variant == "boxes2semseg" else (
        "box_map", "boxmap2semseg")
    mixture[name] = whole(names, given, "semseg", texts)
    if variant == "count_chain":
      mixture.metadata2boxes = whole(names, "metadata", "boxes", texts)
  elif variant in ALONE:
    given, target, stage = ALONE[variant]
    pretrain.masking.mixture = {"alone": whole(names, given, target, texts)}
    pretrain.eval.cross_modal = dict(inputs=(), targets=())
    steering = (stage,)
  c.order = tuple(n for n in c.order if n not in ("generate", "transfer") and not (
      n.startswith("gen_") and n not in steering))
  for name in set(c.stages) - set(c.order):
    del c.stages[name]
  return c
