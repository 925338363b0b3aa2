"""Transfer on the scenes dataset: 4M-pretrained encoder vs. the same encoder from scratch.

    python -m m4.main --config=configs/transfer/scenes.py --workdir=workdirs/transfer_scenes \
        --config.init=workdirs/pretrain_scenes_tiny

Five tasks from the scenes samples' labels: object count and shape of the
largest object (classification), semantic segmentation and depth from RGB,
and segmentation from RGB + depth (an extra input modality, as MultiMAE).
Each runs with 10 % of the training labels, probed (frozen encoder, linear
head) and fine-tuned (layer-wise lr decay 0.75, MLP head), from the
pretrained and from a random init: 20 runs, written side by side to
WORKDIR/eval/results.md. The encoder reads RGB (and depth) as the VQ tokens
the model was pretrained on (`tokenizers`).

Variants: `:quick` (the quickstart stage: two tasks, short runs, about three
minutes on 2 CPU cores), `:tiny` (tests: a few steps).
"""

import ml_collections

from m4.data import pipeline


def get_config(arg=None):
  variant = arg or "full"
  if variant not in ("full", "quick", "tiny"):
    raise ValueError(f"configs/transfer/scenes.py: unknown variant {arg!r}; use '', quick or tiny.")
  c = ml_collections.ConfigDict()
  c.trainer = "transfer"
  c.title = "Transfer on scenes (64 px)"
  c.seeds = (0,)
  c.init = ""  # The pretraining run (or saved model) directory: --config.init=DIR.
  c.init_key = "model"  # Where its checkpoints keep the model state.
  c.init_step = -1  # -1: the latest checkpoint.
  c.model = ml_collections.ConfigDict()  # FourMConfig overrides (dtype, remat, ...).
  c.inits = ("pretrained", "scratch")
  c.protocols = ("probe", "finetune")
  c.label_fractions = (0.1,)

  rgb = ("rgb",)
  c.tasks = ml_collections.ConfigDict({
      "count": dict(kind="classification", inputs=rgb, target="labels/count",
                    num_classes=6, label_smoothing=0.0),
      "largest_shape": dict(kind="classification", inputs=rgb, target="labels/largest_shape",
                            num_classes=4, label_smoothing=0.0),
      "semseg": dict(kind="segmentation", inputs=rgb, target="semseg", num_classes=6),
      "depth": dict(kind="depth", inputs=rgb, target="depth"),
      "semseg_rgbd": dict(kind="segmentation", inputs=("rgb", "depth"), target="semseg",
                          num_classes=6),
  })
  # The VQ tokenizer of each token input (a name on m4.tokenizers' search path or a dir).
  c.tokenizers = ml_collections.ConfigDict({"rgb": "vq_rgb", "depth": "vq_depth"})
  c.pixel_normalization = "symmetric"  # For pixel inputs: [0, 1] -> [-1, 1].

  # The scenes dataset of configs/scenes.py; None fields accept what is stored.
  c.data = pipeline.data_config(
      kind="scenes", dir="workdirs/scenes/data", image_size=(64, 64),
      crop_scale=(1.0, 1.0), flip=True,  # Crops could cut objects out of count labels.
      batch_size=32, eval_split="test", num_workers=0)
  for field in ("resolution", "min_objects", "max_objects", "seed", "antialias", "num_train",
                "num_validation", "num_test"):
    c.data[field] = None

  protocol = lambda **kw: ml_collections.ConfigDict(dict(
      dict(num_steps=0, num_epochs=0, learning_rate=1e-3, min_learning_rate=0.0,
           warmup_steps=50, weight_decay=0.0, layer_decay=1.0, grad_clip=1.0,
           head_hidden=0, b1=0.9, b2=0.999), **kw))
  c.probe = protocol(num_steps=1500, learning_rate=1e-3)
  c.finetune = protocol(num_steps=1500, learning_rate=3e-4, weight_decay=0.05,
                        layer_decay=0.75, head_hidden=256)
  c.eval = ml_collections.ConfigDict(dict(num_samples=0, num_examples=8))
  c.log_every = 50
  c.checkpoint_every = 500
  c.mesh = ml_collections.ConfigDict({"data": -1})
  c.sharding_rules = None

  if variant == "quick":
    for name in ("largest_shape", "depth", "semseg_rgbd"):
      del c.tasks[name]
    c.probe.num_steps = c.finetune.num_steps = 150
    c.probe.warmup_steps = c.finetune.warmup_steps = 15
    c.checkpoint_every = 0
    c.log_every = 25
    c.eval.num_examples = 6
  elif variant == "tiny":
    for name in ("largest_shape", "semseg_rgbd"):
      del c.tasks[name]
    c.data.batch_size = 16
    c.probe.num_steps = c.finetune.num_steps = 6
    c.probe.warmup_steps = c.finetune.warmup_steps = 2
    c.finetune.head_hidden = 16
    c.checkpoint_every = 0
    c.log_every = 3
    c.eval.num_samples = 32
    c.eval.num_examples = 4
  return c
