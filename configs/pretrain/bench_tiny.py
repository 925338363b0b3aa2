"""The speed benchmark shape: 4M at 4+4 blocks, width 256, 4 heads, batch 32.

    python -m m4.tools.bench_train --config=configs/pretrain/bench_tiny.py

SwiGLU without biases, float32; vocabularies rgb 16384 / depth 8192 /
semseg 4096 / caption 30000 (4M's), 8x8 image tokens, 64 input + 64 target
tokens per sample. The reference ml-4m model takes about 1.4 s for forward +
loss + backward of this shape on a 2-core CPU (no optimizer step).
"""

import ml_collections

from m4 import config_files

IMAGE = dict(kind="image", num_tokens=64, grid=(8, 8))


def get_config(arg=None):
  config_files.variant(arg, __file__, ("default",))
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 32
  c.total_steps = 1000
  # Modalities registered for this run (4M's vocabularies on 8x8 grids).
  c.modalities = ml_collections.ConfigDict(dict(
      rgb_bench=dict(vocab_size=16384, **IMAGE),
      depth_bench=dict(vocab_size=8192, **IMAGE),
      semseg_bench=dict(vocab_size=4096, **IMAGE),
      caption_bench=dict(kind="sequence", vocab_size=30000, num_tokens=256),
  ))
  names = ("rgb_bench", "depth_bench", "semseg_bench", "caption_bench")
  c.model = ml_collections.ConfigDict(dict(
      dim=256, encoder_depth=4, decoder_depth=4, num_heads=4, mlp_type="swiglu",
      encoder_modalities=names, decoder_modalities=names,
      num_encoder_tokens=64, num_decoder_tokens=64,
      # Unrolled layers: faster steps on CPU than the scan (experiments/train_speed/).
      dtype="float32", scan_layers=False, remat="none", head_chunk_size=128,
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=100, final_lr_ratio=0.0, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.05, clip_norm=1.0))
  # Synthetic masked batches: Dirichlet(alpha) budget splits (4M's all-to-all).
  # breakdown: also time forward and forward + backward alone.
  # peak_tflops: the MFU's peak (None: bench_train.peak_tflops's figure for the device);
  # wall: also measure the matmul wall (a 2048^2 product) in the same run.
  c.bench = ml_collections.ConfigDict(dict(
      warmup=2, steps=10, alpha=1.0, breakdown=False, wall=True,
      peak_tflops=ml_collections.config_dict.placeholder(float)))
  return c
