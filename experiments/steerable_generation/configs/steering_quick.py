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

The curriculum (text first, then part of the map), one command for both
arms from one base model:

  curriculum      boxes2semseg at weight 3 for 4,200 steps (the text
                  learned), then two phases from it (lr 1e-3, 50 warm-up,
                  cosine, `phase_steps`): `phase_map` gives the text
                  component a random part of the map besides the whole text,
                  `phase_whole` (the control) keeps the text whole. Each phase
                  is drawn from the boxes by the gen_boxes decoding (MaskGIT)
                  and in one greedy step. `--config.seed=N` seeds the base
                  and both phases (initialisation, masks, the order of the
                  training scenes; the scenes themselves stay the same);
                  `--config.phase_steps=N` sets both phases' length.

Their held-out loss is that mapping's alone (no cross-modal evaluation from
RGB: the model never sees it); each keeps the one steering stage it serves
(its chained RGB, which these models never learned to draw, is noise).

No transfer and no other steering stage: the box hit rate is the figure.
"""

import copy

from m4 import config_files

_TINY = config_files.load(__file__, "../../../configs/pretrain/scenes_tiny.py")

VARIANTS = ("text2all", "boxes2semseg", "box_map", "boxmap2semseg", "count_chain")
CURRICULUM = dict(base_weight=3.0, base_steps=4200, phase_steps=2700, phase_lr=1e-3,
                  phase_warmup=50)
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


def add_curriculum(c, component) -> tuple:
  """The base (the text component at CURRICULUM's weight and steps), its two
  phases and their four generation stages; returns the generation stages."""
  pretrain = c.stages.pretrain
  pretrain.total_steps = CURRICULUM["base_steps"]
  pretrain.masking.mixture.boxes2semseg = dict(component, weight=CURRICULUM["base_weight"])
  c.seed, c.phase_steps = 0, CURRICULUM["phase_steps"]
  pretrain.seed = c.get_ref("seed")
  phases, gens = (), ()
  for arm, map_part in (("map", 1.0), ("whole", 0.0)):
    phase = copy.deepcopy(pretrain)
    phase.init = "{root}/pretrain"
    phase.seed = c.get_ref("seed")
    phase.total_steps = c.get_ref("phase_steps")
    phase.eval.every = phase.checkpoint_every = c.get_ref("phase_steps") // 3
    phase.masking.mixture.boxes2semseg.input_alphas.semseg = map_part
    phase.optimizer.lr = CURRICULUM["phase_lr"]
    phase.optimizer.warmup_steps = CURRICULUM["phase_warmup"]
    c.stages[f"phase_{arm}"] = phase
    phases += (f"phase_{arm}",)
    for decoding in ("maskgit", "greedy"):
      gen = copy.deepcopy(c.stages.gen_boxes)
      gen.init = f"{{root}}/phase_{arm}"
      if decoding == "greedy":
        gen.decoding.semseg.num_steps = 1
        gen.decoding.semseg.temperature = 0.0
      c.stages[f"gen_boxes_{arm}_{decoding}"] = gen
      gens += (f"gen_boxes_{arm}_{decoding}",)
  at = c.order.index("pretrain") + 1
  c.order = c.order[:at] + phases + gens + c.order[at:]
  return gens


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, VARIANTS + tuple(ALONE) + ("curriculum",))
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
  elif variant == "curriculum":
    steering = add_curriculum(c, whole(names, "boxes", "semseg", texts))
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
