"""The training-step benchmark tool runs and reports consistent figures."""

import runpy

import jax
import numpy as np
import pytest

from m4.tools import bench_train
from tests.conftest import REPO


def test_bench_reports_steady_state_steps():
  """On the data-parallel mesh of every device (8 CPU devices in the tests)."""
  config = runpy.run_path(f"{REPO}/configs/pretrain/bench_tiny.py")["get_config"]()
  config.batch_size = 8
  config.model.update(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                      num_encoder_tokens=16, num_decoder_tokens=16)
  config.bench.update(warmup=1, steps=3)
  out = bench_train.bench(config)
  assert out["steps_timed"] == 3 and out["devices"] == len(jax.devices())
  assert 0 < out["step_s_min"] <= out["step_s_median"] <= out["step_s_max"]
  np.testing.assert_allclose(out["tokens_per_s"], 8 * 32 / out["step_s_median"], rtol=1e-2)
  assert out["compile_s"] > 0 and out["peak_rss_mb"] > 0 and np.isfinite(out["loss"])
  assert 4096 <= out["mean_target_vocab"] <= 30000
  # FLOPs: at least the heads' matmuls (2 x D x V per target token, forward only).
  assert out["gflops_per_step"] * 1e9 > 2 * 32 * 4096 * 8 * 16
  parts = out["gflops_by_part"]
  assert set(parts) == {"attention_projections", "attention_scores", "mlp", "heads"}
  assert sum(parts.values()) == pytest.approx(out["gflops_per_step"], abs=5e-3)
  # Heads: forward + backward (x 3) of D x V per target token (16 per sample, batch 8).
  assert parts["heads"] == pytest.approx(6 * 8 * 16 * 32 * out["mean_target_vocab"] / 1e9, abs=6e-4)
  np.testing.assert_allclose(out["tflops_per_s"], out["gflops_per_step"] / 1e3
                             / out["step_s_median"], rtol=2e-2)
  assert out["peak_tflops"] > 0 and 0 < out["mfu"] < 1, out["peak_source"]
  assert out["wall_tflops"] > 0
  np.testing.assert_allclose(out["fraction_of_wall"], out["tflops_per_s"] / out["wall_tflops"],
                             rtol=2e-2)


def test_4m_b_config_is_4m_base_at_its_pretraining_budget():
  """The GPU shape: 4M-B (12+12 x 768, 12 heads), bf16, 224 px, 128 + 128 tokens,
  batch 128; its modalities register beside bench_tiny's 8x8 ones."""
  from m4 import modalities
  from m4.models import configs

  tiny = runpy.run_path(f"{REPO}/configs/pretrain/bench_tiny.py")["get_config"]()
  config = runpy.run_path(f"{REPO}/configs/pretrain/bench_4m_b.py")["get_config"]()
  modalities.register_from_config(tiny.modalities)
  modalities.register_from_config(config.modalities)
  cfg = configs.from_config(config.model)
  assert (cfg.encoder_depth, cfg.decoder_depth, cfg.dim, cfg.num_heads) == (12, 12, 768, 12)
  assert (cfg.dtype, cfg.mlp_hidden, cfg.num_encoder_tokens, cfg.num_decoder_tokens) == (
      "bfloat16", 2048, 128, 128)
  assert config.batch_size == 128
  grids = {m.name: (m.grid, m.vocab_size) for m in cfg.modality_specs if m.kind == "image"}
  assert grids == {"rgb_bench_224": ((14, 14), 16384), "depth_bench_224": ((14, 14), 8192),
                   "semseg_bench_224": ((14, 14), 4096)}
  # About 21 TFLOP per step (experiments/train_speed/gpu.md): heads at bench_tiny's vocabulary mix.
  flops = bench_train.train_flops(cfg, config.batch_size, 13640.4)
  assert flops == pytest.approx(21.27e12, rel=1e-3)
