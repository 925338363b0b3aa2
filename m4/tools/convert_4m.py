"""Converts a reference 4M checkpoint (apple/ml-4m, safetensors) to m4, and back.

    python -m m4.tools.convert_4m --src=model.safetensors --out=DIR
    python -m m4.tools.convert_4m --src=FOLDER --check=FOLDER     # parity check
    python -m m4.tools.convert_4m --src=DIR --to_reference=model.safetensors

`--src` is a .safetensors file or a folder holding `model.safetensors` and,
optionally, a `config.json` (the reference's model config: num_heads and, if
present, modality types, sequence lengths, token budgets; otherwise the
safetensors metadata is read). Sizes, depths, biases, vocabularies and grids
are read from the tensors themselves.

`--out DIR` writes DIR/config.json (the m4 model config and the modalities it
registers) and DIR/checkpoints/0 (orbax, via m4.checkpoints); load it with
`m4.models.pretrained.load(DIR)` or `--config.init=DIR`. 4M names map onto m4
names:

    tok_rgb@224 -> rgb@224 (image tokens; the number is grid x patch pixels)
    rgb@224     -> rgb_pixels@224 (raw patches, input only)
    caption     -> caption@4m (sequence)

Tied weights are loaded once (the copy must be equal); buffers (position
tables, zero LayerNorm biases) are recomputed and compared, not loaded. A
missing tensor, a wrong shape, an unused tensor or an unknown modality is an
error naming it (`--skip_unknown` drops unknown modalities instead).

Errors (a --src that is not a readable safetensors file, a tensor with NaN
or inf values, a missing or misshapen tensor, an --out that exists) are one
line, `m4: error: ...`, naming the file or tensor, with exit status 2.

`--check FOLDER` runs m4 on a reference run saved in the fixture format
(inputs.npz, logits.npz, config.json; see tests/fixtures/ml4m_tiny/README.md)
and prints one JSON line with the largest logit and loss differences; the
exit status is 1 beyond tolerance: 1e-5 absolute on logits, 1e-6 relative on
losses (1e-6 * max(1, |reference loss|); m4.models.convert.parity.loss_tol).

The library is m4.models.convert; this module is its command line.
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging
from flax import nnx
from safetensors.numpy import save_file

from m4 import workdir
from m4.models import convert
from m4.models import pretrained


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  try:
    if f.to_reference:
      p = convert.plan_from_saved(f.src)
      model = pretrained.load(f.src)
      params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
      save_file(convert.to_reference(params, p), f.to_reference)
      print(json.dumps({"wrote": f.to_reference}))
      return 0
    model, p = convert.convert_checkpoint(f.src, f.out, suffix=f.suffix,
                                          skip_unknown=f.skip_unknown)
    summary = {"modalities": p.names, "skipped": p.skipped}
    if f.out:
      summary["out"] = f.out
    if not f.check:
      print(json.dumps(summary))
      return 0
    report = convert.check(model, p, f.check)
    print(json.dumps(report, sort_keys=True))
    return 0 if report["ok"] else 1
  except (convert.ConversionError, workdir.ConfigError, workdir.DataError, OSError) as e:
    # One line naming the file or tensor, exit status 2 (m4.main's convention).
    print(f"m4: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2


def run():
  flags.DEFINE_string("src", None, "A .safetensors file or a folder with one (and config.json).")
  flags.DEFINE_string("out", None, "Directory to write the m4 model to.")
  flags.DEFINE_string("check", None, "A reference run (fixture format) to compare against.")
  flags.DEFINE_string("to_reference", None, "With --src=<converted m4 dir>: write the "
                      "reference state dict to this .safetensors file.")
  flags.DEFINE_string("suffix", "", "Appended to every converted modality name.")
  flags.DEFINE_bool("skip_unknown", False, "Drop modalities m4 cannot convert.")
  flags.mark_flag_as_required("src")
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()
