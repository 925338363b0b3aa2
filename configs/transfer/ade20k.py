"""ADE20K semantic segmentation (TFDS `scene_parse150`), fine-tuned and probed, beside scratch.

    python -m m4.main --config=configs/transfer/ade20k.py --workdir=workdirs/transfer_ade \
        --config.init=workdirs/4m_b    # e.g. a converted 4M-B (python -m m4.tools.convert_4m)

Prepare the data once: `tfds build scene_parse150 --file_format=array_record`.
Follows MultiMAE's ADE20K fine-tuning (cfgs/finetune/semseg/ade/ft_ade_64e_*):
150 classes with class 0 ("other") ignored (m4.data.sources reduces zero
labels), 64 epochs, AdamW lr 1e-4, layer decay 0.75, warmup one epoch,
random scale crops and flips; mIoU on the 2000 validation images (TFDS's
`test` split). Differences: the model's native 224 px input (MultiMAE: 512
px), m4's per-patch MLP head (MultiMAE: a ConvNeXt adapter), global batch 32.
Variant `:mock` is the job shrunk for tests on `tfds.testing.mock_data`.
"""

from m4 import config_files

_COMMON = config_files.load(__file__, "common.py")
PIXELS = _COMMON.PIXELS  # A converted 4M's raw RGB input at 224 px.


def get_config(arg=None):
  c = _COMMON.tfds_base(__file__, arg, "ADE20K semantic segmentation (TFDS scene_parse150)")
  c.label_fractions = (1.0,)
  c.tasks.semseg = dict(kind="segmentation", inputs=(PIXELS,), target="semseg",
                        num_classes=150)
  c.data.update(dict(name="scene_parse150", eval_split="test", crop_scale=(0.5, 1.0),
                     crop_ratio=(0.75, 1.333), batch_size=32, num_workers=2,
                     tfds_semseg_reduce_zero=True))
  c.finetune.update(dict(num_steps=0, num_epochs=64, learning_rate=1e-4, warmup_steps=0,
                         warmup_epochs=1, weight_decay=0.05, layer_decay=0.75, head_hidden=1024))
  c.probe.update(dict(num_steps=0, num_epochs=16, learning_rate=1e-3, warmup_steps=0,
                      warmup_epochs=1))
  c.checkpoint_every = 2000
  if config_files.variant(arg, __file__, ("full", "mock")) == "mock":
    _COMMON.shrink_for_mock(c)
    c.finetune.update(dict(num_steps=2, num_epochs=0, warmup_steps=1, head_hidden=8))
  return c
