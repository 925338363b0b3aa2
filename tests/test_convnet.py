"""The supervised conv net of the transfer tables (m4.models.convnet)."""

import jax
import numpy as np
import pytest
from flax import nnx

from m4 import workdir
from m4.models import convnet
from m4.models import transfer


def _rngs():
  return nnx.Rngs(jax.random.key(0, impl="rbg"))  # Compiles fast on CPU.


def test_convnet_stem_keeps_full_resolution_outputs_and_names_a_bad_size():
  seg = transfer.TaskSpec.from_config("semseg", dict(kind="segmentation", inputs=("rgb_pixels",),
                                                     target="semseg", num_classes=6))
  count = transfer.TaskSpec.from_config("count", dict(kind="classification", inputs=("rgb_pixels",),
                                                      target="labels/count", num_classes=5))
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  batch = {"rgb_pixels": {"tensor": x}}
  for stem in (1, 2):
    net = convnet.ConvNet(seg, image_size=(32, 32), width=8, stem=stem, rngs=_rngs())
    # A non-zero head: output pixels must differ within each stem block.
    net.head.kernel.value = jax.random.normal(jax.random.key(1), net.head.kernel.value.shape)
    out = np.asarray(net(batch, train=True))
    assert out.shape == (2, 32, 32, 6)
    assert np.abs(out[:, 0::2, 0::2] - out[:, 1::2, 1::2]).max() > 1e-3
    assert convnet.ConvNet(count, image_size=(32, 32), width=8, stem=stem,
                           rngs=_rngs())(batch).shape == (2, 5)
  with pytest.raises(workdir.ConfigError, match=r"data.image_size.*divide by 32.*stem 4"):
    convnet.ConvNet(seg, image_size=(48, 48), width=8, stem=4, rngs=_rngs())
