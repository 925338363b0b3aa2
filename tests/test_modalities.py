"""The modality registry accepts good entries and refuses bad ones loudly."""

import pytest

from m4 import modalities as M


def test_defaults_are_registered():
  for name in ("rgb", "depth", "semseg", "caption"):
    mod = M.get(name)
    assert mod.name == name
  assert M.get("rgb").grid == (8, 8) and M.get("rgb").num_tokens == 64
  assert M.get("caption").is_sequence and M.get("caption").grid is None


def test_unknown_name_lists_known():
  with pytest.raises(KeyError, match="registered"):
    M.get("thermal")


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="x", kind="image", vocab_size=8, num_tokens=0, grid=(0, 0)), "num_tokens"),
    (dict(name="x", kind="audio", vocab_size=8, num_tokens=4), "kind"),
    (dict(name="x", kind="image", vocab_size=0, num_tokens=4, grid=(2, 2)), "vocab_size"),
    (dict(name="x", kind="image", vocab_size=8, num_tokens=4, grid=(3, 2)), "grid"),
    (dict(name="x", kind="image", vocab_size=8, num_tokens=4), "grid"),
    (dict(name="x", kind="sequence", vocab_size=8, num_tokens=4, roles=("output",)), "roles"),
    (dict(name="x", kind="pixels", vocab_size=0, num_tokens=4, grid=(2, 2)), "inputs only"),
])
def test_bad_entries_fail(kwargs, match):
  with pytest.raises(ValueError, match=match):
    M.Modality(**kwargs)


def test_duplicate_name_fails():
  with pytest.raises(ValueError, match="already registered"):
    M.register(M.Modality("rgb", "image", vocab_size=7, num_tokens=4, grid=(2, 2)))
  # Re-registering the identical entry is harmless (e.g. a config reloaded).
  M.register(M.get("rgb"))


def test_register_from_config():
  specs = {"tok_test@32": dict(kind="image", vocab_size=16, num_tokens=4, grid=[2, 2])}
  (mod,) = M.register_from_config(specs)
  assert M.get("tok_test@32") is mod and mod.grid == (2, 2)
  with pytest.raises(ValueError, match="config.modalities.bad"):
    M.register_from_config({"bad": dict(kind="image", vocab_size=16, num_tokens=4, size=3)})
