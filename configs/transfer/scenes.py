"""Transfer on the scenes dataset: 4M-pretrained encoder vs. the same encoder from scratch.

    python -m m4.main --config=configs/transfer/scenes.py --workdir=workdirs/transfer_scenes

Five tasks from the scenes samples' labels: object count and shape of the
largest object (classification), semantic segmentation and depth from RGB,
and segmentation from RGB + depth (a second input modality at fine-tune time,
as MultiMAE's RGB-D). RGB is read as raw pixels (`rgb_pixels`), as the model
was pretrained; depth as its VQ tokens (`tokenizers.depth`). Each task runs
with 10 % of the training labels, probed (frozen encoder; a linear readout,
per token for dense tasks) and fine-tuned (layer-wise lr decay 0.75; an MLP
head for classification, a light convolutional upsampling head for dense
tasks), from the pretrained and from a random init, 400 steps of batch 32.
Every arm picks its learning rate by the same sweep on the validation split
(first seed), then runs 3 seeds, evaluated on the test split. Beside them, a
supervised conv net (m4.models.convnet, its own sweep) on the same 10 % and
on 100 % of the labels shows what these labels allow a model built for
images. The pretrained model is the run of configs/pretrain/scenes_tiny.py
(`init`) on the same dataset (its train split's labels are subsampled, its
test split is held out). Note that the pretraining targets include the
semantic maps and depth of the training scenes as VQ tokens (as 4M-7 is
pretrained on pseudo labels of those modalities); count and largest_shape
were never targets.

Variants: `:core` (count, semseg and depth only), `:quick` (the quickstart
stage: count and semseg, one seed (three for the probes, which train on
cached features in seconds, and for semseg fine-tuning), short runs, each
arm's probe rate and semseg fine-tuning rate swept on validation, the count
fine-tuning and conv-net rates the quick-scale sweep chose, the conv net's
first level on 2x2-pixel positions; about five minutes on a 2-core EPYC
with AVX-512), `:tiny` (tests: a few steps).
Results: experiments/transfer_scenes/.
"""

import ml_collections

from m4 import config_files
from m4.data import pipeline

_COMMON = config_files.load(__file__, "common.py")


def _protocol(**fields) -> ml_collections.ConfigDict:
  """common.protocol at the scenes' run length: 400 steps, 20 of warmup."""
  return _COMMON.protocol(**{**dict(num_steps=400, warmup_steps=20), **fields})


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("full", "core", "quick", "tiny"))
  c = ml_collections.ConfigDict()
  c.job = "transfer"
  c.title = "Transfer on scenes (64 px)"
  c.seeds = (0, 1, 2)
  c.init = "workdirs/pretrain/scenes_tiny"  # A pretraining run (or saved model) directory.
  c.init_key = "model"  # Where the checkpoint keeps the model's parameters.
  c.init_step = -1  # The checkpoint step (-1: the latest).
  c.model = ml_collections.ConfigDict()  # Overrides keeping the parameters (dtype, remat).
  c.modalities = ml_collections.ConfigDict()  # Registry entries the tasks add (none here).
  c.inits = ("pretrained", "scratch")
  c.protocols = ("probe", "finetune")
  c.label_fractions = (0.1,)
  c.baselines = ("convnet",)
  c.baseline_fractions = (0.1, 1.0)

  rgb = ("rgb_pixels",)
  c.tasks = ml_collections.ConfigDict()
  c.tasks.count = dict(kind="classification", inputs=rgb, target="labels/count",
                       num_classes=6, label_smoothing=0.0)
  c.tasks.largest_shape = dict(kind="classification", inputs=rgb, target="labels/largest_shape",
                               num_classes=4, label_smoothing=0.0)
  c.tasks.semseg = dict(kind="segmentation", inputs=rgb, target="semseg", num_classes=6)
  # depth_bins 0: the head regresses log-depth; K: it scores K depth bins (DINOv2's probe).
  c.tasks.depth = dict(kind="depth", inputs=rgb, target="depth", depth_bins=0)
  c.tasks.semseg_rgbd = dict(kind="segmentation", inputs=("rgb_pixels", "depth"),
                             target="semseg", num_classes=6)
  # The VQ tokenizer of each token input (a name on m4.tokenizers' search path or a dir).
  c.tokenizers = ml_collections.ConfigDict(dict(depth="vq_depth"))
  c.pixel_normalization = "symmetric"  # For pixel inputs: [0, 1] -> [-1, 1].

  # The scenes dataset of configs/data/scenes64.py; None fields accept what is stored.
  c.data = pipeline.data_config(
      kind="scenes", dir="workdirs/data/scenes64", image_size=(64, 64),
      crop_scale=(1.0, 1.0), flip=True,  # Crops could cut objects out of count labels.
      batch_size=32, eval_split="test", num_workers=0)
  for field in ("resolution", "min_objects", "max_objects", "seed", "antialias", "num_train",
                "num_validation", "num_test", "extras"):
    c.data[field] = None

  # Without a sweep (`quick`): the rates the quick-scale sweep chose on validation for
  # most arms (experiments/transfer_scenes/); the conv net's is not swept there.
  c.probe = _protocol(learning_rate=1e-2)
  c.finetune = _protocol(learning_rate=3e-3, weight_decay=0.05, layer_decay=0.75, head_hidden=128,
                         dense_head="upsample")
  # width: the conv net's first level's (then 2x, 4x, 4x); stem: pixels per side of its
  # first level's positions (m4.models.convnet).
  c.supervised = _protocol(learning_rate=3e-3, weight_decay=1e-4, width=16, stem=1)
  # Learning rates each arm tries on its first seed, scored on `split`; every
  # seed then runs with the best (empty: no sweep, the rates above).
  c.sweep = ml_collections.ConfigDict(dict(split="validation", learning_rates=dict(
      probe=(1e-2, 3e-2, 1e-1, 3e-1), finetune=(1e-3, 3e-3, 1e-2),
      supervised=(1e-3, 3e-3, 1e-2))))
  # The protocols whose runs train on each labelled sample's two views (plain and
  # mirrored) made once (m4.jobs.view_cache: the loader's distribution, drawn by step);
  # the others read every batch through the loader. experiments/transfer_scenes/ was
  # made with ("probe",): its fine-tunings and conv nets read the loader.
  c.cached_views = ("probe", "finetune", "supervised")
  # One task's own protocol fields (e.g. seeds) and, as `learning_rates`, its arms' sweep
  # (m4.jobs.transfer_protocols); every arm of the task gets the same.
  c.task_protocols = ml_collections.ConfigDict()
  # num_samples: evaluated samples (0: the whole split); num_examples: in pictures.
  c.eval = ml_collections.ConfigDict(dict(num_samples=0, num_examples=8))
  c.log_every = 50
  c.checkpoint_every = 500
  c.mesh = ml_collections.ConfigDict({"data": -1})
  c.sharding_rules = None  # m4.sharding.DEFAULT_RULES.
  # PRNG of the models' initialisation: "rbg" compiles far faster on CPU than
  # "threefry2x32" (seconds, not half a minute, for a small model's first build).
  c.prng_impl = "rbg"

  if variant == "core":  # One task of each kind: classification, segmentation, depth.
    for name in ("largest_shape", "semseg_rgbd"):
      del c.tasks[name]
  if variant == "quick":
    for name in ("largest_shape", "depth", "semseg_rgbd"):
      del c.tasks[name]
    c.seeds = (0,)
    c.probe.seeds = (0, 1, 2)  # Probes on cached features take seconds: 3 seeds, mean ± std.
    c.baseline_fractions = (0.1,)
    # Probes are cheap (seconds): each arm picks its rate, at both scales 0.03-0.3.
    c.sweep.learning_rates = dict(probe=(3e-2, 1e-1, 3e-1), finetune=(), supervised=())
    # Semseg fine-tuning: the two arms' optima differ (pretrained 1e-2, scratch 3e-3 on
    # validation; a shared 3e-3 favoured scratch), and one seed's gain spreads by about
    # 1.2 points: each arm sweeps both rates, then 3 seeds (about 3 minutes more).
    c.task_protocols.semseg = dict(finetune=dict(seeds=(0, 1, 2), learning_rates=(3e-3, 1e-2)))
    c.finetune.num_steps = c.supervised.num_steps = 150
    # A linear probe is a convex problem: report it near its optimum. On cached
    # features 600 steps cost seconds; at 150 the probes' training loss is far
    # from converged (semseg 0.316 -> 0.237 at 600, 0.227 at 2000), and the
    # gap between the arms depends on where it stops (experiments/quickstart/).
    c.probe.num_steps = 600
    c.probe.warmup_steps = c.finetune.warmup_steps = c.supervised.warmup_steps = 15
    c.finetune.head_hidden = 64
    c.supervised.stem = 2  # 2x2-pixel first level: 3x faster, the same figures at this scale.
    c.checkpoint_every = 0
    c.log_every = 25
    c.eval.num_examples = 6
  elif variant == "tiny":
    for name in ("largest_shape", "semseg_rgbd"):
      del c.tasks[name]
    c.seeds = (0,)
    c.baselines, c.baseline_fractions = (), ()
    c.sweep.learning_rates = dict(probe=(), finetune=(), supervised=())
    c.data.batch_size = 16
    c.probe.num_steps = c.finetune.num_steps = 6
    c.probe.warmup_steps = c.finetune.warmup_steps = 2
    c.finetune.head_hidden = 16
    c.checkpoint_every = 0
    c.log_every = 3
    c.eval.num_samples = 32
    c.eval.num_examples = 4
  return c
