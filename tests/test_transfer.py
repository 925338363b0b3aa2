"""Transfer's parts: label budgets, layer decay, frozen probes, heads, metrics, verdicts
(the job end to end: test_transfer_job.py)."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import m4  # pylint: disable=unused-import
from m4 import engine
from m4 import modalities
from m4 import optim
from m4 import workdir
from m4.data import subsets
from m4.evaluators import depth as depth_eval
from m4.evaluators import segmentation as seg_eval
from m4.models import pretrained
from m4.models import transfer
from m4.models.fourm import FourM
from m4.jobs import transfer as trainer
from m4.jobs import transfer_protocols as protocols
from tests.transfer_setup import PIXELS, PIXELS_SPEC, rngs, tiny_cfg, tiny_task, tiny_transfer_config


# ------------------------------------------------------------------ label budgets


def test_label_fractions_pick_distinct_samples_deterministically():
  n = 1000
  for fraction, want in ((0.01, 10), (0.1, 100), (0.333, 333), (1.0, 1000), (1e-5, 1)):
    idx = subsets.label_subset(n, fraction, seed=4)
    assert len(idx) == want == subsets.budget(n, fraction)
    assert len(np.unique(idx)) == want and idx.min() >= 0 and idx.max() < n
    np.testing.assert_array_equal(idx, subsets.label_subset(n, fraction, seed=4))
  assert not np.array_equal(subsets.label_subset(n, 0.1, 4), subsets.label_subset(n, 0.1, 5))
  # One seed: the budgets are nested.
  assert set(subsets.label_subset(n, 0.01, 4)) <= set(subsets.label_subset(n, 0.1, 4))
  source = subsets.LabelSubset([{"id": i} for i in range(50)], 0.2, seed=1)
  assert len(source) == 10
  assert [source[i]["id"] for i in range(10)] == list(subsets.label_subset(50, 0.2, 1))
  for bad in (0.0, 1.5, -0.1):
    with pytest.raises(workdir.ConfigError, match="label_fractions"):
      subsets.label_subset(n, bad, seed=0)


# ------------------------------------------------------------------ layer decay


def test_layer_decay_gives_each_layer_its_scale():
  cfg = transfer.backbone_config(tiny_cfg(), (PIXELS,))
  model = transfer.TransferModel(cfg, tiny_task(), image_size=(32, 32), rngs=rngs(0))
  _, trainable, _ = nnx.split(model, transfer.trainable_filter(model, "finetune"), ...)
  params = nnx.to_pure_dict(trainable)
  depth, decay = cfg.encoder_depth, 0.5
  scales = optim.rule_tree(transfer.layer_decay_rules(depth, decay), params, 1.0)
  bb = scales["backbone"]
  assert bb["encoder_embed"][PIXELS] == decay ** (depth + 1)
  assert bb["modality_embed"][PIXELS] == decay ** (depth + 1)
  np.testing.assert_allclose(bb["encoder"]["qkv"], [0.125, 0.25, 0.5])
  assert bb["encoder_norm_scale"] == 1.0
  assert all(s == 1.0 for s in jax.tree.leaves(scales["head"]))
  decays = optim.rule_tree(model.decay_rules(), params, False)
  assert decays["backbone"]["encoder"]["qkv"] and decays["backbone"]["encoder_embed"][PIXELS]
  assert decays["head"]["readout"]["out"]["kernel"]
  assert not any((decays["backbone"]["encoder"]["norm1_scale"],
                  decays["backbone"]["modality_embed"][PIXELS],
                  decays["backbone"]["encoder_norm_scale"],
                  decays["head"]["readout"]["out"]["bias"]))
  # The probe trains the head only; finetuning adds exactly what `encode` reads.
  _, probe, _ = nnx.split(model, transfer.trainable_filter(model, "probe"), ...)
  assert set(nnx.to_pure_dict(probe)) == {"head"}
  assert set(params["backbone"]) == {"encoder", "encoder_embed", "encoder_norm_scale",
                                     "modality_embed"}

  # Through the optimizer: with constant gradients Adam's step is lr * sign(g),
  # so block i moves decay ** (depth - i) times as far as the head.
  tx, _ = protocols.make_optimizer(learning_rate=1e-2, min_learning_rate=1e-2, warmup_steps=1,
                                 num_steps=10, weight_decay=0.0, layer_decay=decay, depth=depth,
                                 grad_clip=0.0, b1=0.9, b2=0.999)
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
  head_step = float(jnp.abs(updates["head"]["readout"]["out"]["kernel"]).max())
  assert head_step > 0
  per_block = jnp.abs(updates["backbone"]["encoder"]["mlp_out"]).max(axis=(1, 2)) / head_step
  np.testing.assert_allclose(per_block, [0.125, 0.25, 0.5], rtol=1e-4)
  emb = float(jnp.abs(updates["backbone"]["encoder_embed"][PIXELS]).max()) / head_step
  np.testing.assert_allclose(emb, decay ** (depth + 1), rtol=1e-4)


def test_a_new_input_modality_joins_the_pretrained_encoder(tmp_path):
  """A modality the pretrained model never read (4M's and MultiMAE's claim):
  the encoder and the old inputs are restored exactly, the new input's
  embeddings keep their random init and fine-tune at the full rate."""
  base = tiny_cfg()
  init_dir = str(tmp_path / "pretrained")
  pretrained.save(init_dir, FourM(base, rngs=rngs(7)))
  new = "normals_tok32test"
  modalities.register_from_config({new: dict(kind="image", vocab_size=64, num_tokens=16,
                                             grid=(4, 4), data_key="normals",
                                             tokenizer="vq_normals_tok32test")})
  inputs = (new, PIXELS)
  assert transfer.new_inputs(base, inputs) == (new,)
  cfg = transfer.backbone_config(base, inputs)
  assert cfg.encoder_modalities == (PIXELS, new) and cfg.num_encoder_tokens == 32
  model = transfer.TransferModel(cfg, tiny_task(inputs=inputs), image_size=(32, 32),
                                 new_inputs=(new,), rngs=rngs(0))
  fresh = nnx.to_pure_dict(nnx.state(model.backbone, nnx.Param))
  transfer.restore_encoder(model, init_dir)
  got = nnx.to_pure_dict(nnx.state(model.backbone, nnx.Param))
  want = nnx.to_pure_dict(nnx.state(FourM(base, rngs=rngs(7)), nnx.Param))
  for key in ("encoder_embed", "modality_embed"):
    np.testing.assert_array_equal(got[key][PIXELS], want[key][PIXELS])
    np.testing.assert_array_equal(got[key][new], fresh[key][new])
  for a, b in zip(jax.tree.leaves(got["encoder"]), jax.tree.leaves(want["encoder"])):
    np.testing.assert_array_equal(a, b)
  _, trainable, _ = nnx.split(model, transfer.trainable_filter(model, "finetune"), ...)
  scales = optim.rule_tree(transfer.layer_decay_rules(cfg.encoder_depth, 0.5, (new,)),
                           nnx.to_pure_dict(trainable), 1.0)["backbone"]
  assert scales["encoder_embed"][new] == scales["modality_embed"][new] == 1.0
  assert scales["encoder_embed"][PIXELS] == 0.5 ** (cfg.encoder_depth + 1)
  assert model(_batch_with(new)).shape == (2, 32, 32, 6)
  with pytest.raises(workdir.ConfigError, match=r"tasks.\*.inputs.*nosuch"):
    transfer.backbone_config(base, (PIXELS, "nosuch"))


def _batch_with(token_input, n=2, seed=0):
  """Pixels and random tokens of `token_input`, as EncoderInputs lays them out."""
  rng = np.random.default_rng(seed)
  enc = transfer.EncoderInputs((PIXELS,))({"rgb": rng.random((n, 32, 32, 3), dtype=np.float32)})
  enc[token_input] = dict(tensor=rng.integers(0, 64, (n, 16)).astype(np.int32),
                          input_mask=np.ones((n, 16), bool), target_mask=np.zeros((n, 16), bool))
  return enc


# ------------------------------------------------------------------ frozen probe


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  enc = transfer.EncoderInputs((PIXELS,))({"rgb": rng.random((n, 32, 32, 3), dtype=np.float32)})
  return enc, rng.integers(0, 6, (n, 32, 32)).astype(np.int32)


@pytest.mark.parametrize("protocol", ["probe", "finetune"])
def test_probe_keeps_the_encoder_frozen_and_finetuning_changes_it(protocol):
  cfg = transfer.backbone_config(tiny_cfg(), (PIXELS,))
  task = tiny_task()
  model = transfer.TransferModel(cfg, task, image_size=(32, 32), rngs=rngs(0))
  before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  graphdef, trainable, stats, rest = nnx.split(
      model, transfer.trainable_filter(model, protocol), nnx.BatchStat, ...)
  params, stats = nnx.to_pure_dict(trainable), nnx.to_pure_dict(stats)
  tx, _ = protocols.make_optimizer(learning_rate=1e-2, min_learning_rate=0.0, warmup_steps=1,
                                 num_steps=4, weight_decay=0.05, layer_decay=0.75, depth=3,
                                 grad_clip=1.0, b1=0.9, b2=0.999,
                                 decay_rules=model.decay_rules())
  state = engine.init_state(params, tx, extra=stats)
  step = protocols.train_step(graphdef, task, protocol, tx)
  enc, labels = _batch()
  for _ in range(3):
    state, metrics = step(state, (rest, enc, labels))
  assert np.isfinite(float(metrics["loss"])) and int(state.step) == 3
  trained = nnx.merge(graphdef, nnx.State(state.params), nnx.State(state.extra), rest)
  after = nnx.to_pure_dict(nnx.state(trained, nnx.Param))
  # The head's batch statistics moved towards the features' (running averages).
  assert float(jnp.abs(trained.head.readout.norm.mean[...]).max()) > 0
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, after)
  encoder = [changed["backbone"]["encoder"][k] for k in changed["backbone"]["encoder"]]
  encoder.append(changed["backbone"]["encoder_embed"][PIXELS])
  assert changed["head"]["readout"]["out"]["kernel"]
  if protocol == "probe":
    assert not any(jax.tree.leaves(changed["backbone"]))
  else:
    assert all(encoder)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_a_head_can_read_the_last_layers_each_through_the_final_norm(scan_layers):
  cfg = transfer.backbone_config(tiny_cfg(scan_layers=scan_layers), (PIXELS,))  # 3 blocks.
  enc, _ = _batch(n=2)
  one = transfer.TransferModel(cfg, tiny_task(), image_size=(32, 32), rngs=rngs(0))
  three = transfer.TransferModel(cfg, tiny_task(), image_size=(32, 32), feature_layers=3,
                                 rngs=rngs(0))
  out1, valid = one.features(enc)
  out3, valid3 = three.features(enc)
  d = cfg.dim
  assert out3.shape == (*out1.shape[:2], 3 * d)
  np.testing.assert_array_equal(valid, valid3)
  np.testing.assert_allclose(out3[..., -d:], out1, atol=1e-6)  # The deepest: the usual output.
  # The shallowest: the first block alone (its own parameters), through the final norm.
  first = transfer.TransferModel(
      transfer.backbone_config(tiny_cfg(scan_layers=scan_layers, encoder_depth=1), (PIXELS,)),
      tiny_task(), image_size=(32, 32), rngs=rngs(1))
  pure = nnx.to_pure_dict(nnx.state(three.backbone))
  pure["encoder"] = jax.tree.map(lambda a: a[:1], pure["encoder"])
  state = nnx.state(first.backbone)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(first.backbone, state)
  np.testing.assert_allclose(out3[..., :d], first.features(enc)[0], atol=1e-5)
  assert not np.allclose(out3[..., :d], out1, atol=1e-2)  # A layer apart, not a copy.
  assert three.head.readout.norm.mean.shape == (3 * d,) and three(enc).shape == (2, 32, 32, 6)
  classify = transfer.TransferModel(cfg, tiny_task("classification"), image_size=(32, 32),
                                    feature_layers=2, rngs=rngs(0))
  assert classify(enc).shape == (2, 4)
  with pytest.raises(ValueError, match=r"feature_layers 4 is not in \[1, 3\]"):
    transfer.TransferModel(cfg, tiny_task(), image_size=(32, 32), feature_layers=4, rngs=rngs(0))


# ------------------------------------------------------------------ token inputs


def test_token_inputs_and_the_grid_a_dense_head_reads(tmp_path):
  from m4.tokenizers import vq_tokenizer  # pylint: disable=g-import-not-at-top
  specs = {"rgb_tok32test": dict(kind="image", vocab_size=64, num_tokens=16, grid=(4, 4),
                                 data_key="rgb", tokenizer="vq_rgb_tok32test"),
           "depth_tok32test": dict(kind="image", vocab_size=64, num_tokens=16, grid=(4, 4),
                                   data_key="depth", tokenizer="vq_depth_tok32test")}
  modalities.register_from_config(specs)
  rng = np.random.default_rng(0)
  batch = {"rgb": rng.random((2, 32, 32, 3), dtype=np.float32),
           "depth": rng.uniform(0.5, 20, (2, 32, 32)).astype(np.float32)}
  c = tiny_transfer_config()
  toks = {}
  for i, name in enumerate(specs):
    spec = vq_tokenizer.TokenizerSpec(
        modality=modalities.get(name).to_dict(), image_size=(32, 32),
        model=dict(channels=(8, 16), num_res_blocks=1, code_dim=8, patch=4),
        io={"loss_weights": {}})
    model, io = vq_tokenizer.build(spec, rngs(i))
    toks[name] = vq_tokenizer.VQTokenizer(model, io, spec)
    c.tokenizers[name] = toks[name].save(str(tmp_path / name))
  # The trainer loads each input's tokenizer from config.tokenizers.
  c.init, c.inits = "", ("scratch",)
  c.model = dict(encoder_modalities=tuple(specs), decoder_modalities=("rgb",), dim=32,
                 encoder_depth=1, decoder_depth=1, num_heads=2)
  c.data.batch_size = 8
  ctx = trainer._Context(c, str(tmp_path / "wd"))  # pylint: disable=protected-access
  task = transfer.TaskSpec.from_config("seg", dict(kind="segmentation", inputs=tuple(specs),
                                                   target="semseg", num_classes=6))
  enc = ctx.encoder_inputs(task)(batch)
  for name, key in (("rgb_tok32test", "rgb"), ("depth_tok32test", "depth")):
    np.testing.assert_array_equal(enc[name]["tensor"],
                                  np.asarray(toks[name].encode(batch[key])).reshape(2, 16))
    assert enc[name]["input_mask"].all() and not enc[name]["target_mask"].any()
  model = transfer.TransferModel(transfer.backbone_config(ctx.base, task.inputs), task,
                                 image_size=(32, 32), rngs=rngs(0))
  # Dense heads read slot k * 16 + i * 4 + j as modality k's cell (i, j).
  slots = model.backbone.encode(enc).slots
  np.testing.assert_array_equal(slots.modality, np.repeat([[0, 1]], 16, axis=1).repeat(2, 0))
  np.testing.assert_array_equal(slots.position, np.tile(np.arange(16), 2)[None].repeat(2, 0))
  assert model.head.readout.norm.mean.shape == (2 * 32,)  # rgb and depth features side by side.
  assert model(enc).shape == (2, 32, 32, 6)
  with pytest.raises(workdir.ConfigError, match=r"tokenizers.rgb_tok32test.*needs a tokenizer"):
    transfer.EncoderInputs(("rgb_tok32test",), {})


# ------------------------------------------------------------------ metrics


def test_segmentation_and_depth_metrics_match_numpy():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, (3, 6, 5)).astype(np.int32)
  labels[0, 0] = 255
  preds = np.where(rng.random(labels.shape) < 0.6, labels, rng.integers(0, 4, labels.shape))
  preds = np.where(labels == 255, 2, preds).astype(np.int32)
  valid = np.array([True, True, False])
  ev = seg_eval.Evaluator.__new__(seg_eval.Evaluator)
  m = ev.finalize(jax.tree.map(np.asarray, seg_eval.Evaluator.batch_sums(
      jnp.asarray(preds), jnp.asarray(labels), jnp.asarray(valid), 4)))
  keep = (labels != 255) & valid[:, None, None]
  ious = []
  for c in range(4):
    inter = np.sum((preds == c) & (labels == c) & keep)
    union = np.sum(((preds == c) | (labels == c)) & keep)
    if union:
      ious.append(inter / union)
  assert m["miou"] == pytest.approx(np.mean(ious))
  assert m["pixel_accuracy"] == pytest.approx(np.mean(preds[keep] == labels[keep]))

  gt = rng.uniform(0.5, 10, (3, 4, 4)).astype(np.float32)
  gt[1, :2] = 0  # Invalid pixels are not scored.
  pred = (gt * rng.uniform(0.7, 1.4, gt.shape)).astype(np.float32)
  ev = depth_eval.Evaluator.__new__(depth_eval.Evaluator)
  m = ev.finalize(jax.tree.map(np.asarray, depth_eval.Evaluator.batch_sums(
      jnp.asarray(pred), jnp.asarray(gt), jnp.ones(3, bool), 0)))
  want = {"delta1": [], "abs_rel": [], "rmse": []}
  for p, g in zip(pred, gt):
    p, g = p[g > 0], g[g > 0]
    want["delta1"].append(np.mean(np.maximum(p / g, g / p) < 1.25))
    want["abs_rel"].append(np.mean(np.abs(p - g) / g))
    want["rmse"].append(np.sqrt(np.mean((p - g) ** 2)))
  for k, v in want.items():
    assert m[k] == pytest.approx(np.mean(v), rel=1e-5), k


def test_results_table_puts_the_inits_side_by_side(tmp_path):
  from m4.evaluators import report  # pylint: disable=g-import-not-at-top

  def result(init, protocol, seed, top1):
    return {"run": f"count__{init}__{protocol}__10pct__s{seed}", "task": "count",
            "kind": "classification", "init": init, "protocol": protocol, "seed": seed,
            "label_fraction": 0.1, "num_labels": 400, "metrics": {"top1": top1, "chance": 0.3},
            "headline": ["top1"], "higher_is_better": {"top1": True}, "steps": 10, "epochs": 0.8,
            "train_loss": 1.0, "train_seconds": 2.0, "steps_per_sec": 5.0, "seconds": 3.0}

  results = [result("pretrained", "finetune", 0, 0.8), result("scratch", "finetune", 0, 0.5),
             result("pretrained", "probe", 0, 0.6), result("scratch", "probe", 0, 0.4),
             result("pretrained", "probe", 1, 0.7), result("scratch", "probe", 1, 0.4)]
  lines = report.table(results).splitlines()
  assert lines[0] == ("| task | metric | labels | protocol | scratch | pretrained"
                      " | Δ pretrained − scratch |")
  assert lines[2] == ("| count | top1 ↑ (chance 0.3) | 10 % (400) | probe | 0.4 ± 0 (2)"
                      " | 0.65 ± 0.05 (2) | +0.25 |")
  assert lines[3] == "| count | top1 ↑ (chance 0.3) | 10 % (400) | finetune | 0.5 | 0.8 | +0.3 |"
  paths = report.write(str(tmp_path), results)
  assert os.path.getsize(paths["plot"]) > 0 and "## Runs" in open(paths["table"]).read()


def test_depth_prediction_grid_keeps_the_labels_scale(tmp_path):
  """A prediction far outside the labelled range, on an unlabelled pixel (the
  sky), does not change the colours of the rest of the grid."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from m4.evaluators import report  # pylint: disable=g-import-not-at-top
  label = np.tile(np.linspace(2.0, 20.0, 16, dtype=np.float32)[:, None], (1, 16))[None]
  label[:, :4] = 0.0  # Unlabelled rows.
  os.makedirs(tmp_path / "examples")
  grids = []
  for outlier in (None, 0.1):
    pred = np.where(label > 0, label, 50.0)
    if outlier is not None:
      pred[:, 0, 0] = outlier
    for init in ("scratch", "pretrained"):
      np.savez(tmp_path / "examples" / f"d__{init}__probe__10pct__s0.npz", target=label,
               prediction=pred, id=np.array([0]))
    runs = [{"run": f"d__{init}__probe__10pct__s0", "task": "d", "kind": "depth", "init": init,
             "protocol": "probe", "seed": 0, "label_fraction": 0.1} for init in ("scratch",
                                                                               "pretrained")]
    path, = report.prediction_grids(str(tmp_path), runs)
    grids.append(np.asarray(Image.open(path).convert("RGB")))
  changed = np.any(grids[0] != grids[1], axis=-1)
  assert 0 < changed.sum() < 0.01 * changed.size, changed.sum()


def test_binned_depth_reads_bin_centres_and_learns_a_sharp_edge():
  """depth_bins: a confident bin reads back as its centre, and a linear readout
  of 4x4 tokens, bilinearly upsampled, fits a depth step inside a patch
  better through bins than through one regressed channel."""
  from m4 import value_scales
  from m4.models import transfer_heads as heads
  k = 32
  lo, hi = (value_scales.normalize("depth", np.float32(d))
            for d in (value_scales.DEPTH_MIN_M, value_scales.DEPTH_MAX_M))
  onehot = 50.0 * jax.nn.one_hot(jnp.array([[[0, 5, k - 1]]]), k)
  np.testing.assert_allclose(heads.log_depth(onehot, k)[0, 0],
                             [lo, lo + 5 * (hi - lo) / (k - 1), hi], atol=1e-4)
  # Near half of each image at 2 m, the rest at 20 m; the edge column varies.
  rng = np.random.default_rng(0)
  edge = rng.integers(6, 26, 64)
  depth_m = np.where(np.arange(32)[None, None, :] < edge[:, None, None], 2.0, 20.0)
  depth_m = np.broadcast_to(depth_m, (64, 32, 32)).astype(np.float32)
  tokens = np.stack([np.clip(edge[:, None] - 8 * np.arange(4)[None, :], -8, 8) / 8.0] * 4,
                    axis=1)  # (B, 4 rows, 4 cols): where the edge falls in each column.
  grid = jnp.asarray(np.concatenate([tokens[..., None], np.ones_like(tokens)[..., None]], -1),
                     jnp.float32)
  errors = {}
  for bins in (0, k):
    head = heads.BilinearHead(2, max(bins, 1), 8, rngs=rngs(0))
    opt = nnx.Optimizer(head, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(head, opt, bins=bins):
      loss, grads = nnx.value_and_grad(
          lambda h: heads.depth_loss(heads.log_depth(h(grid), bins), jnp.asarray(depth_m)))(head)
      opt.update(head, grads)
      return loss

    for _ in range(400):
      loss = step(head, opt)
    errors[bins] = float(loss)
  assert errors[k] < 0.5 * errors[0], errors
  # The transfer model, the conv net baseline, the loss and the predictions read the bins;
  # a run stored before depth_bins existed keeps its settings.
  cfg = transfer.backbone_config(tiny_cfg(), (PIXELS,))  # Registers PIXELS.
  task = transfer.TaskSpec.from_config("d", dict(kind="depth", inputs=(PIXELS,), target="depth",
                                                 depth_bins=4))
  assert "depth_bins" not in dataclasses.replace(task, depth_bins=0).settings()
  assert task.settings()["depth_bins"] == 4
  batch, _ = _batch(n=2)
  from m4.models import convnet
  nets = (transfer.TransferModel(cfg, task, image_size=(32, 32), dense_head="bilinear",
                                 rngs=rngs(0)),
          convnet.ConvNet(task, image_size=(32, 32), width=8, rngs=rngs(0)))
  target = jnp.full((2, 32, 32), 3.0)
  assert [net(batch).shape for net in nets] == [(2, 32, 32, 4)] * 2
  out = jax.random.normal(jax.random.key(1), (2, 32, 32, 4))
  np.testing.assert_allclose(transfer.predictions(task, out),
                             heads.depth_metres(heads.log_depth(out, 4)), rtol=1e-6)
  np.testing.assert_allclose(transfer.loss(task, out, target),
                             heads.depth_loss(heads.log_depth(out, 4), target), rtol=1e-6)


def test_bad_task_configs_name_the_field():
  modalities.register_from_config({PIXELS: PIXELS_SPEC})
  with pytest.raises(workdir.ConfigError, match=r"tasks.t.kind"):
    transfer.TaskSpec.from_config("t", dict(kind="detection", inputs=(PIXELS,), target="x"))
  with pytest.raises(workdir.ConfigError, match=r"tasks.t.inputs.*nosuch"):
    transfer.TaskSpec.from_config("t", dict(kind="depth", inputs=("nosuch",), target="depth"))
  with pytest.raises(workdir.ConfigError, match=r"tasks.t.num_classes"):
    transfer.TaskSpec.from_config("t", dict(kind="segmentation", inputs=(PIXELS,),
                                            target="semseg"))
  with pytest.raises(workdir.ConfigError, match=r"tasks.t.depth_bins.*segmentation task"):
    transfer.TaskSpec.from_config("t", dict(kind="segmentation", inputs=(PIXELS,),
                                            target="semseg", num_classes=3, depth_bins=8))
  with pytest.raises(workdir.ConfigError, match=r"tasks.t.depth_bins.*got 1"):
    transfer.TaskSpec.from_config("t", dict(kind="depth", inputs=(PIXELS,), target="depth",
                                            depth_bins=1))
  with pytest.raises(workdir.ConfigError, match=r"tasks.t: unknown fields \['clases'\]"):
    transfer.TaskSpec.from_config("t", dict(kind="depth", inputs=(PIXELS,), target="depth",
                                            clases=3))
  c = tiny_transfer_config()
  c.tasks = {"t": dict(kind="depth", inputs=(PIXELS,), target="depth")}
  c.init = ""
  with pytest.raises(workdir.ConfigError, match=r"config.init: the 'pretrained' init needs"):
    trainer.check_config(c)
  c.inits = ("scratch",)
  c.finetune.layer_decay = 1.5
  with pytest.raises(workdir.ConfigError, match=r"finetune.layer_decay"):
    trainer.check_config(c)
  c.finetune.layer_decay = 0.75
  c.cached_views = ("probe", "linear")
  with pytest.raises(workdir.ConfigError, match=r"config.cached_views: 'linear' is not one of"):
    trainer.check_config(c)
  c.cached_views = ("probe",)
  del c.finetune.b2
  with pytest.raises(workdir.ConfigError, match=r"config.finetune.b2: is required"):
    trainer.check_config(c)
  del c.prng_impl
  with pytest.raises(workdir.ConfigError, match=r"config.prng_impl: is required"):
    trainer.check_config(c)


def test_verdicts_say_plainly_whether_pretraining_helped():
  from m4.evaluators import report  # pylint: disable=g-import-not-at-top
  row = lambda init, value, metric="miou", higher=True, seed=0: dict(
      task="semseg", label_fraction=0.1, protocol="probe", init=init, seed=seed,
      headline=[metric], higher_is_better={metric: higher}, metrics={metric: value})
  assert report.verdicts([row("pretrained", 0.6), row("scratch", 0.4)]) == [
      "semseg probe 10% miou: pretrained 0.600 vs scratch 0.400 (+0.200): pretrained beats"
      " scratch (one seed)"]
  (line,) = report.verdicts([row("pretrained", 0.3), row("scratch", 0.4)])
  assert line.endswith("pretrained does NOT beat scratch (one seed)")
  (line,) = report.verdicts([row("pretrained", 0.3, "abs_rel", False),
                             row("scratch", 0.4, "abs_rel", False)])
  assert line.endswith("pretrained beats scratch (one seed)")  # Lower is better.
  # One seed: a gain within 2 x SEED_SPREAD is a tie.
  (line,) = report.verdicts([row("pretrained", 0.445), row("scratch", 0.430)])
  assert line.endswith("no clear difference (within 2 standard errors, 0.020; one seed)")
  # Paired seeds: +0.05 on average, but the per-seed gains spread by 0.1 (2 SE 0.115).
  seeds = [row("pretrained", v, seed=s) for s, v in enumerate((0.40, 0.50, 0.60))]
  (line,) = report.verdicts(seeds + [row("scratch", 0.45, seed=s) for s in range(3)])
  assert line.endswith("no clear difference (within 2 standard errors, 0.115)")
  # The arms spread as much, but every seed gains 0.05 over its paired scratch run.
  (line,) = report.verdicts(seeds + [row("scratch", v, seed=s)
                                     for s, v in enumerate((0.35, 0.45, 0.55))])
  assert line.endswith("(+0.050): pretrained beats scratch")
  # Unpaired seeds: the larger arm's spread stands in for the gains'.
  (line,) = report.verdicts(seeds + [row("scratch", v, seed=s + 5)
                                     for s, v in enumerate((0.35, 0.45, 0.55))])
  assert line.endswith("no clear difference (within 2 standard errors, 0.115)")


def test_upsample_head_draws_at_full_resolution_and_starts_uniform():
  from m4.models import transfer_heads  # pylint: disable=g-import-not-at-top
  head = transfer_heads.UpsampleHead(32, 6, 8, rngs=rngs(0))
  grid = jax.random.normal(jax.random.key(1), (2, 4, 4, 32))
  out = head(grid, train=True)
  assert out.shape == (2, 32, 32, 6)
  np.testing.assert_array_equal(np.asarray(out), 0.0)  # Zero-initialised last layer.
  with pytest.raises(ValueError, match="power of 2"):
    transfer_heads.UpsampleHead(32, 6, 6, rngs=rngs(0))


def test_bilinear_head_interpolates_each_tokens_scores():
  """A linear readout per token, bilinearly upsampled: each pixel between
  patch centres mixes the scores of the tokens around it by its distance."""
  from m4.models import transfer_heads  # pylint: disable=g-import-not-at-top
  head = transfer_heads.BilinearHead(8, 3, 4, norm="layer", rngs=rngs(0))
  head.readout.out.kernel.value = jax.random.normal(jax.random.key(2), (8, 3))
  grid = jax.random.normal(jax.random.key(1), (2, 3, 3, 8))
  out = np.asarray(head(grid))
  tokens = np.asarray(head.readout(grid, False))  # (2, 3, 3, 3) per-token scores.
  assert out.shape == (2, 12, 12, 3)
  pos = (np.arange(12) + 0.5) / 4 - 0.5  # Pixel centres in token units.
  inner = np.flatnonzero((pos >= 0) & (pos <= 2))  # Between the first and last centres.
  lo = np.minimum(np.floor(pos[inner]).astype(int), 1)
  frac = pos[inner] - lo
  rows = (tokens[:, lo] * (1 - frac)[None, :, None, None]
          + tokens[:, lo + 1] * frac[None, :, None, None])
  expected = (rows[:, :, lo] * (1 - frac)[None, None, :, None]
              + rows[:, :, lo + 1] * frac[None, None, :, None])
  np.testing.assert_allclose(out[:, inner][:, :, inner], expected, atol=1e-5)
