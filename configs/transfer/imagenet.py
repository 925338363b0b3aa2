"""ImageNet-1k classification (TFDS `imagenet2012`) at 100 %, 10 % and 1 % of the labels.

    python -m m4.main --config=configs/transfer/imagenet.py --workdir=workdirs/transfer_in1k \
        --config.init=workdirs/4m_b    # e.g. a converted 4M-B (python -m m4.tools.convert_4m)

Prepare the data once (manual download): `tfds build imagenet2012
--file_format=array_record`. Fine-tuning follows MultiMAE / MAE
(cfgs/finetune/cls/ft_in1k_100e_*): 100 epochs, global batch 1024, AdamW lr
5e-4 x 1024 / 256 = 2e-3, weight decay 0.05, layer decay 0.65, 5 warmup
epochs, label smoothing 0.1, mean-pooled tokens, random resized crops (8-100 %
of the area) and flips; top-1 on the 50k validation images. Not in m4: drop
path, mixup / cutmix, RandAugment (so expect lower absolute numbers than the
papers). The linear probe standardises the pooled features with batch
statistics (MAE's BatchNorm without affine) and trains a linear head with
AdamW for 90 epochs (MAE: LARS, batch 16384). Label fractions are m4's seeded subsets, not
the SimCLR 1 % / 10 % lists. Variant `:mock` shrinks the job for tests on
`tfds.testing.mock_data`.
"""

from m4 import config_files

_COMMON = config_files.load(__file__, "common.py")
PIXELS = _COMMON.PIXELS  # A converted 4M's raw RGB input at 224 px.


def get_config(arg=None):
  c = _COMMON.tfds_base(__file__, arg, "ImageNet-1k classification (TFDS imagenet2012)")
  c.label_fractions = (1.0, 0.1, 0.01)
  c.tasks.imagenet = dict(kind="classification", inputs=(PIXELS,), target="labels/label",
                          num_classes=1000, label_smoothing=0.1)
  c.data.update(dict(name="imagenet2012", eval_split="validation", crop_scale=(0.08, 1.0),
                     crop_ratio=(0.75, 1.333), batch_size=1024, num_workers=8))
  c.finetune.update(dict(num_steps=0, num_epochs=100, learning_rate=2e-3, warmup_steps=0,
                         warmup_epochs=5, weight_decay=0.05, layer_decay=0.65, head_hidden=0,
                         head_norm="layer"))  # MAE's fc_norm on the mean-pooled tokens.
  c.probe.update(dict(num_steps=0, num_epochs=90, learning_rate=1e-3, warmup_steps=0,
                      warmup_epochs=10))
  c.checkpoint_every = 2000
  if config_files.variant(arg, __file__, ("full", "mock")) == "mock":
    _COMMON.shrink_for_mock(c)
    c.finetune.update(dict(num_steps=2, num_epochs=0, warmup_steps=1))
  return c
