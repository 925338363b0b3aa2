"""What the transfer configs share: `protocol(...)`, one protocol's settings
(every field, documented); for configs/transfer/{ade20k,nyu_depth,imagenet}.py
a TFDS benchmark read as a converted 4M's raw RGB pixels at 224 px, and the
`:mock` shrink.

Not a config itself: the TFDS configs beside it call `tfds_base(...)`, which
writes every field the transfer job reads, set their task, data and
schedules, and `shrink_for_mock(c)` for `:mock`; configs/transfer/scenes.py
calls `protocol`. The other fields are documented in m4/jobs/transfer.py and
configs/transfer/scenes.py.
"""

import ml_collections

from m4 import config_files
from m4.data import pipeline

# The raw-pixel input of a converted 4M (m4.tools.convert_4m names it so).
PIXELS = "rgb_pixels@224"
PIXELS_SPEC = dict(kind="pixels", vocab_size=0, num_tokens=196, grid=(14, 14),
                   roles=("input",), tokenizer=None, data_key="rgb")


def tfds_base(config_file: str, arg, title: str) -> ml_collections.ConfigDict:
  """Pretrained and scratch, fine-tuned and probed, on TFDS data at 224 px with flips."""
  config_files.variant(arg, config_file, ("full", "mock"))
  c = ml_collections.ConfigDict()
  c.job = "transfer"
  c.title = title
  c.seeds = (0,)
  c.init = ""  # The converted 4M's directory (m4.tools.convert_4m).
  c.init_key = "model"
  c.init_step = -1
  c.model = ml_collections.ConfigDict()
  c.modalities = ml_collections.ConfigDict({PIXELS: PIXELS_SPEC})
  c.inits = ("pretrained", "scratch")
  c.protocols = ("finetune", "probe")
  c.label_fractions = (1.0,)
  c.tasks = ml_collections.ConfigDict()
  c.task_protocols = ml_collections.ConfigDict()  # Per-task protocol overrides (none).
  c.tokenizers = ml_collections.ConfigDict()
  c.pixel_normalization = "imagenet"  # As 4M's rgb@224 input.
  c.data = pipeline.data_config(kind="tfds", dir="", train_split="train", eval_split="test",
                                image_size=(224, 224), flip=True, modalities=())
  c.probe = protocol(learning_rate=1e-3)
  c.finetune = protocol(learning_rate=1e-4, weight_decay=0.05, layer_decay=0.75)
  c.baselines = ()
  c.baseline_fractions = ()
  c.supervised = protocol(learning_rate=2e-3, weight_decay=1e-4, width=16, stem=1)
  c.sweep = ml_collections.ConfigDict(dict(split="validation", learning_rates=dict(
      probe=(), finetune=(), supervised=())))
  c.cached_views = ("probe", "finetune", "supervised")  # Used only without random crops.
  c.eval = ml_collections.ConfigDict(dict(num_samples=0, num_examples=8))
  c.log_every = 100
  c.checkpoint_every = 0
  c.mesh = ml_collections.ConfigDict({"data": -1})
  c.sharding_rules = None
  c.prng_impl = "rbg"
  return c


def protocol(**fields) -> ml_collections.ConfigDict:
  """One protocol's settings: every field the transfer job reads for it."""
  return ml_collections.ConfigDict({**dict(
      seeds=(),  # This protocol's seeds (empty: config.seeds).
      num_steps=1000,  # Optimizer steps; 0: use num_epochs.
      num_epochs=0.0,  # Epochs over the labelled subset (when num_steps is 0).
      learning_rate=1e-3,
      min_learning_rate=0.0,  # Linear warmup from 0, then cosine to this.
      warmup_steps=50,  # 0: use warmup_epochs.
      warmup_epochs=0.0,
      weight_decay=0.0,  # AdamW, on linear matrices only.
      layer_decay=1.0,  # Fine-tuning: block i's lr x decay ** (depth - i); 1: none.
      grad_clip=1.0,  # Global-norm clipping; 0: none.
      head_hidden=0,  # 0: a linear readout; > 0: an MLP with this hidden width.
      head_norm="batch",  # Before the readout: "batch" (MAE's probe) or "layer".
      dense_head="patch",  # Dense tasks: "patch" (per-token readout), "bilinear" or "upsample".
      head_pool="mean",  # Classification: pool the tokens by their "mean" or by "attention".
      feature_layers=1,  # The head reads the last k encoder layers' outputs, concatenated.
      b1=0.9, b2=0.999), **fields})


def shrink_for_mock(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`:mock`: for tests on tfds.testing.mock_data: a tiny random model, scratch only,
  fine-tuned on all labels; the caller sets the few fine-tuning steps."""
  c.init = ""
  c.inits = ("scratch",)
  c.protocols = ("finetune",)
  c.label_fractions = (1.0,)
  c.model = dict(size="tiny", encoder_modalities=(PIXELS,), decoder_modalities=("rgb",),
                 patch_size=16)
  c.data.batch_size = 8
  c.data.num_workers = 0
  c.log_every = 1
  c.checkpoint_every = 0
  c.eval.num_samples = 4
  c.eval.num_examples = 2
  return c
