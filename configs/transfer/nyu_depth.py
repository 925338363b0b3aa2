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

from m4 import config_files

_COMMON = config_files.load(__file__, "common.py")
PIXELS = _COMMON.PIXELS  # A converted 4M's raw RGB input at 224 px.


def get_config(arg=None):
  c = _COMMON.tfds_base(__file__, arg, "NYUv2 depth (TFDS nyu_depth_v2)")
  c.label_fractions = (1.0,)
  c.tasks.depth = dict(kind="depth", inputs=(PIXELS,), target="depth", depth_bins=0)
  c.data.update(dict(name="nyu_depth_v2", eval_split="validation", crop_scale=(1.0, 1.0),
                     batch_size=64, num_workers=2))
  c.finetune.update(dict(num_steps=25000, learning_rate=1e-4, warmup_steps=1250,
                         weight_decay=1e-4, layer_decay=0.75, head_hidden=1024))
  c.probe.update(dict(num_steps=10000, learning_rate=1e-3, warmup_steps=500))
  c.checkpoint_every = 1000
  if config_files.variant(arg, __file__, ("full", "mock")) == "mock":
    _COMMON.shrink_for_mock(c)
    c.finetune.update(dict(num_steps=2, warmup_steps=1, head_hidden=8))
  return c
