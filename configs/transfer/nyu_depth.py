"""NYUv2 depth from RGB (TFDS `nyu_depth_v2`), fine-tuned and probed, beside a scratch baseline.

    python -m m4.main --config=configs/transfer/nyu_depth.py --workdir=workdirs/transfer_nyu \
        --config.init=workdirs/4m_b    # e.g. a converted 4M-B (python -m m4.tools.convert_4m)

Prepare the data once: `tfds build nyu_depth_v2 --file_format=array_record`.
Follows MultiMAE's NYUv2 depth fine-tuning (cfgs/finetune/depth/ft_nyu_2000e_*):
AdamW lr 1e-4, weight decay 1e-4, layer decay 0.75, batch 64, warmup then
cosine; metrics delta1 / abs-rel / RMSE on the 654 test images (TFDS's
`validation` split). Differences, by design or necessity: the input is the
model's RGB pixel modality at its native 224 px (MultiMAE: 256 px with
interpolated positions); the head is m4's light per-patch MLP (MultiMAE: DPT);
the loss is L1 on log-depth (MultiMAE: berHu on depth); TFDS's training split is
the 47584 frames of the raw videos (MultiMAE: the 795 labelled images for 2000
epochs), so the schedule is set in steps to see about as many samples
(25k steps x 64). Variant `:mock` is the same job shrunk for tests on
`tfds.testing.mock_data` (a tiny random model, scratch only, a few steps).
"""

from m4.trainers import transfer

# The raw-pixel input of a converted 4M (m4.tools.convert_4m names it so).
PIXELS = "rgb_pixels@224"
PIXELS_SPEC = dict(kind="pixels", vocab_size=0, num_tokens=196, grid=(14, 14),
                   roles=("input",), tokenizer=None, data_key="rgb")


def get_config(arg=None):
  if arg not in (None, "", "mock"):
    raise ValueError(f"configs/transfer/nyu_depth.py: unknown variant {arg!r}; use '' or mock.")
  c = transfer.default_config()
  c.title = "NYUv2 depth (TFDS nyu_depth_v2)"
  c.modalities[PIXELS] = PIXELS_SPEC
  c.inits = ("pretrained", "scratch")
  c.protocols = ("finetune", "probe")
  c.label_fractions = (1.0,)
  c.tasks.depth = dict(kind="depth", inputs=(PIXELS,), target="depth")
  c.pixel_normalization = "imagenet"  # As 4M's rgb@224 input.
  c.data.update(dict(kind="tfds", name="nyu_depth_v2", dir="", train_split="train",
                     eval_split="validation", image_size=(224, 224), crop_scale=(1.0, 1.0),
                     flip=True, batch_size=64, num_workers=2, modalities=()))
  c.finetune.update(dict(num_steps=25000, learning_rate=1e-4, warmup_steps=1250,
                         weight_decay=1e-4, layer_decay=0.75, head_hidden=1024))
  c.probe.update(dict(num_steps=10000, learning_rate=1e-3, warmup_steps=500))
  c.log_every = 100
  c.checkpoint_every = 1000
  if arg == "mock":
    c.init = ""
    c.inits = ("scratch",)
    c.protocols = ("finetune",)
    c.model = dict(size="tiny", encoder_modalities=(PIXELS,), decoder_modalities=("rgb",),
                   patch_size=16)
    c.data.batch_size = 8
    c.data.num_workers = 0
    c.finetune.update(dict(num_steps=2, warmup_steps=1, head_hidden=8))
    c.log_every = 1
    c.checkpoint_every = 0
    c.eval.num_samples = 4
    c.eval.num_examples = 2
  return c
