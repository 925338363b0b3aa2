"""The GPU benchmark shape: 4M-B in bfloat16 at 4M's pretraining token budget.

    python -m m4.tools.bench_train --config=configs/pretrain/bench_4m_b.py --config.bench.breakdown=True
    python experiments/train_speed/side_by_side.py --ml4m=/tmp/ml-4m --device=cuda \
        --config=configs/pretrain/bench_4m_b.py

bench_tiny's four modalities and vocabularies (rgb 16384 / depth 8192 /
semseg 4096 / caption 30000) at 224 px (14x14 image tokens; registered as
`<name>_224`, beside bench_tiny's 8x8 ones), with 4M-B's
sizes (12+12 blocks, width 768, 12 heads, SwiGLU without biases), 128 input
+ 128 target tokens per sample (4M-B's budget), bfloat16 matmuls with
float32 parameters, and batch 128 per device (4M-B's 8192 over 64 GPUs).
FLOP arithmetic and the commands of a GPU run: experiments/train_speed/gpu.md.
"""

from m4 import config_files

IMAGE = dict(kind="image", num_tokens=196, grid=(14, 14))


def get_config(arg=None):
  config_files.variant(arg, __file__, ("default",))
  c = config_files.load(__file__, "bench_tiny.py").get_config()
  c.batch_size = 128
  c.modalities = {f"{name}_224": dict(spec.to_dict(), **(IMAGE if spec.kind == "image" else {}))
                  for name, spec in c.modalities.items()}
  names = tuple(f"{name}_224" for name in c.model.encoder_modalities)
  c.model.update(size="B", encoder_modalities=names, decoder_modalities=names,
                 num_encoder_tokens=128, num_decoder_tokens=128,
                 dtype="bfloat16", head_chunk_size=1024)
  for key in ("dim", "encoder_depth", "decoder_depth", "num_heads"):
    del c.model[key]  # From the "B" preset.
  return c
