"""What configs/transfer/{ade20k,nyu_depth,imagenet}.py share: a TFDS benchmark
read as a converted 4M's raw RGB pixels at 224 px, and the `:mock` shrink.

Not a config itself: the configs beside it call `tfds_base(...)`, set their
task, data and schedules, and `shrink_for_mock(c)` for `:mock`. Every field is
documented in m4/trainers/transfer.py.
"""

import ml_collections

from m4.trainers import transfer

# The raw-pixel input of a converted 4M (m4.tools.convert_4m names it so).
PIXELS = "rgb_pixels@224"
PIXELS_SPEC = dict(kind="pixels", vocab_size=0, num_tokens=196, grid=(14, 14),
                   roles=("input",), tokenizer=None, data_key="rgb")


def tfds_base(file: str, arg, title: str) -> ml_collections.ConfigDict:
  """Pretrained and scratch, fine-tuned and probed, on TFDS data at 224 px with flips."""
  if arg not in (None, "", "mock"):
    raise ValueError(f"configs/transfer/{file}: unknown variant {arg!r}; use '' or mock.")
  c = transfer.default_config()
  c.title = title
  c.modalities[PIXELS] = PIXELS_SPEC
  c.inits = ("pretrained", "scratch")
  c.protocols = ("finetune", "probe")
  c.pixel_normalization = "imagenet"  # As 4M's rgb@224 input.
  c.data.update(dict(kind="tfds", dir="", train_split="train", image_size=(224, 224), flip=True,
                     modalities=()))
  c.log_every = 100
  return c


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
