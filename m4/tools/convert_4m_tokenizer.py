"""Converts a released 4M VQ-VAE or DiVAE tokenizer (apple/ml-4m, safetensors) to m4.

    python -m m4.tools.convert_4m_tokenizer --src=4M_tokenizers_semseg_4k_224-448 \
        --out=workdirs/tok_4m_semseg --image_size=224
    python -m m4.tools.convert_4m_tokenizer --src=4M_tokenizers_rgb_16k_224-448 \
        --out=workdirs/tok_4m_rgb --modality=rgb --image_size=224
    python -m m4.tools.convert_4m_tokenizer --src=FOLDER --check=FIXTURE   # parity check

`--src` is a folder with `model.safetensors` and `config.json` (as downloaded
from the Hugging Face hub, e.g. EPFL-VILAB/4M_tokenizers_CLIP-B16_8k_224-448),
or the .safetensors file (its metadata then holds the config). Families: COCO
semseg, CLIP-B/16, DINOv2-B/14 and ImageBind-H/14 feature maps and their global
variants, SAM instances, human poses; and the DiVAE ones (RGB, depth, normals,
edges: a patched UNet diffusion decoder, sampled with DDIM by
`tok.decode(tokens, steps=25, seed=0)` or from given noise).

`--out DIR` writes DIR/tokenizer.json and DIR/checkpoints/0 (orbax);
`m4.tokenizers.load(DIR)` opens it. An existing DIR is never overwritten.
`--modality` says what the inputs are (semseg, feature, rgb, normal, depth,
edge, mask; see m4.tokenizers.released_tokenizer for each one's units); semseg and
feature are implied by the config, the others must be given. `--image_size`
is the default resolution (the config's, 448 for the "224-448" releases, if
not given); any multiple of the patch size works. `--name` defaults to the
folder's name. Config keys the reference's VQVAE does not take are an error
unless `--allow_unknown_keys`.

`--check FOLDER` runs the converted model on a reference run saved by
experiments/parity_4m/make_tokenizer_fixtures.py and prints one JSON line with
the largest differences; the exit status is 1 unless token ids are equal,
latents and codes within 1e-5 and reconstructions within 1e-4 (a DiVAE: one
UNet step and the DDIM sample within 1e-4, the schedule within 2e-6;
m4.tokenizers.released_convert). Errors (a missing, misshapen or unused tensor,
NaN values, an unknown config key, an existing --out) are one line,
`m4: error: ...`, naming the file and tensor or key, with exit status 2.
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging

from m4 import workdir
from m4.tokenizers import released_convert
from m4.tokenizers import released_tokenizer


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  try:
    if f.check and not f.out:  # The model alone: no modality needed.
      model, info = released_convert.convert(f.src, f.allow_unknown_keys)
      report = released_convert.check(model, f.check)
      print(json.dumps(report, sort_keys=True))
      return 0 if report["ok"] else 1
    tok, info = released_tokenizer.from_reference(
        f.src, name=f.name, modality=f.modality, image_size=f.image_size,
        allow_unknown_keys=f.allow_unknown_keys)
    if f.out:
      tok.save(f.out)
    if f.check:
      report = released_convert.check(tok.model, f.check)
      print(json.dumps(report, sort_keys=True))
      return 0 if report["ok"] else 1
    print(json.dumps({"name": tok.name, "modality": tok.modality, "image_size": tok.image_size,
                      "grid": tok.grid, "vocab_size": tok.vocab_size, "out": f.out,
                      "ignored_keys": info.ignored_keys}))
    return 0
  except (released_convert.ConversionError, workdir.ConfigError, workdir.DataError,
          OSError) as e:
    print(f"m4: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2


def run():
  flags.DEFINE_string("src", None, "A released tokenizer folder (model.safetensors, "
                      "config.json) or its .safetensors file.")
  flags.DEFINE_string("out", None, "Directory to write the m4 tokenizer to (must not exist).")
  flags.DEFINE_string("check", None, "A reference run (make_tokenizer_fixtures.py) to compare "
                      "against.")
  flags.DEFINE_enum("modality", None, list(released_tokenizer.MODALITIES),
                    "What the inputs are (default: implied by the config).")
  flags.DEFINE_integer("image_size", None, "Default resolution (default: the config's).")
  flags.DEFINE_string("name", None, "The tokenizer's name (default: the folder's).")
  flags.DEFINE_bool("allow_unknown_keys", False, "Ignore config keys the reference's VQVAE "
                    "does not take (listed in the output).")
  flags.mark_flag_as_required("src")
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()
