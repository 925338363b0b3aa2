"""The classification head's token pooling: mean, and an attentive probe."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from m4.models import transfer_heads


def _tokens(rng, n_samples, n_tokens=16, dim=32, classes=4):
  """Noise tokens; one marked token per sample (its last feature 4) carries the class."""
  x = rng.normal(size=(n_samples, n_tokens, dim)).astype(np.float32)
  labels = rng.integers(0, classes, n_samples)
  where = rng.integers(0, n_tokens, n_samples)
  rows = np.arange(n_samples)
  x[rows, where, :classes] += 3.0 * np.eye(classes, dtype=np.float32)[labels]
  x[rows, where, -1] = 4.0
  return x, labels


def _train(head, x, y, steps=300):
  """Adam on the head's parameters (a LayerNorm head: no batch statistics)."""
  valid = jnp.ones(x.shape[:2], bool)
  graphdef, params = nnx.split(head)
  tx = optax.adam(3e-2)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    loss = lambda p: transfer_heads.classification_loss(
        nnx.merge(graphdef, p)(x, valid, train=True), y)
    updates, opt = tx.update(jax.grad(loss)(params), opt, params)
    return optax.apply_updates(params, updates), opt

  for _ in range(steps):
    params, opt = step(params, opt)
  return nnx.merge(graphdef, params)


def _accuracy(head, x, y):
  out = head(jnp.asarray(x), jnp.ones(x.shape[:2], bool), train=False)
  return float(np.mean(np.argmax(np.asarray(out), -1) == y))


def test_attention_pooling_starts_as_the_mean():
  x = np.random.default_rng(0).normal(size=(3, 5, 64)).astype(np.float32)
  valid = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
  mean = transfer_heads.ClassificationHead(64, 3, norm="layer", rngs=nnx.Rngs(0))
  attn = transfer_heads.ClassificationHead(64, 3, norm="layer", pool="attention",
                                           rngs=nnx.Rngs(0))
  assert attn.num_heads == 2
  # The same readout weights (zero-initialised output, same hidden init): give both
  # a random readout so the comparison is not of zeros.
  w = np.random.default_rng(1).normal(size=(64, 3)).astype(np.float32)
  mean.readout.out.kernel[...] = w
  attn.readout.out.kernel[...] = w
  got, want = attn(jnp.asarray(x), valid), mean(jnp.asarray(x), valid)
  assert float(jnp.abs(want).max()) > 0.1
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  # Once the query has learnt something, padding still gets no weight.
  attn.query[...] = np.random.default_rng(2).normal(size=attn.query.shape).astype(np.float32)
  padded = np.where(np.asarray(valid)[..., None], x, 100.0).astype(np.float32)
  np.testing.assert_allclose(np.asarray(attn(jnp.asarray(padded), valid)),
                             np.asarray(attn(jnp.asarray(x), valid)), atol=1e-5)
  assert float(jnp.abs(attn(jnp.asarray(x), valid) - want).max()) > 1e-3  # It moved.


@pytest.mark.parametrize("dim", [32, 64])  # One head; two, the marker in one's slice only.
def test_attention_pooling_finds_the_one_token_that_matters(dim):
  rng = np.random.default_rng(0)
  x, y = _tokens(rng, 512, dim=dim)
  x_test, y_test = _tokens(rng, 256, dim=dim)
  scores = {}
  for pool in ("mean", "attention"):
    head = transfer_heads.ClassificationHead(dim, 4, norm="layer", pool=pool, rngs=nnx.Rngs(0))
    scores[pool] = _accuracy(_train(head, jnp.asarray(x), jnp.asarray(y)), x_test, y_test)
  # Chance is 0.25; the mean dilutes the one token 16 times (about 0.4 here).
  assert scores["attention"] >= 0.75, scores
  assert scores["attention"] >= scores["mean"] + 0.3, scores


def test_unknown_pool_is_refused():
  with pytest.raises(ValueError, match="head pool 'max'"):
    transfer_heads.ClassificationHead(32, 4, pool="max", rngs=nnx.Rngs(0))
