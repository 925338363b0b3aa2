"""Label budgets: a fixed, seeded fraction of a split's samples.

    source = subsets.LabelSubset(sources.make_source(config.data, "train"), 0.1, seed=0)
    len(source)          # round(0.1 * N) distinct samples, the same for every run
    source[0]["id"]      # the sample's index in the full split

The chosen indices are the first `k` of one seeded permutation of the split,
so for one seed the budgets are nested (the 1 % samples are among the 10 %
ones) and a from-scratch baseline sees exactly the labels a pretrained model
sees. Samples keep their `id` in the full split.
"""

from __future__ import annotations

import numpy as np

from m4.workdir import ConfigError

# Separates this stream from the other uses of the config's seed.
_STREAM = 0x5B5E7


def budget(num_samples: int, fraction: float) -> int:
  """How many samples a label fraction keeps: round(f * N), at least one."""
  return max(1, min(num_samples, int(round(float(fraction) * num_samples))))


def label_subset(num_samples: int, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of the samples a label fraction keeps (see module doc)."""
  if not 0 < float(fraction) <= 1:
    raise ConfigError(f"config.label_fractions: {fraction} is not in (0, 1].")
  if num_samples < 1:
    raise ConfigError("config.label_fractions: the training split is empty.")
  order = np.random.default_rng([_STREAM, int(seed)]).permutation(num_samples)
  return np.sort(order[:budget(num_samples, fraction)])


class LabelSubset:
  """A random-access source holding a label fraction of another source."""

  def __init__(self, source, fraction: float, seed: int):
    self.source = source
    self.fraction = float(fraction)
    self.seed = int(seed)
    self.indices = label_subset(len(source), fraction, seed)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[int(self.indices[index])]

  def __repr__(self) -> str:
    return (f"LabelSubset({self.source!r}, fraction={self.fraction}, seed={self.seed},"
            f" {len(self)} samples)")
