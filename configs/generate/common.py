"""What every configs/generate/*.py shares: data, tokenizers, decoding defaults.

Not a config itself: the configs beside it call `base(inputs, targets)` and
change what they need. Every field is documented in m4/jobs/generate.py.
"""

import ml_collections

from m4 import config_files
from m4 import modalities

# How each modality is decoded by default (m4.generation.Step fields).
IMAGE_DECODING = dict(scheme="maskgit", num_steps=8, token_schedule="cosine",
                      temperature=0.5, temperature_schedule="linear", top_k=0, top_p=0.0,
                      cfg_scale=1.0, cfg_conditions=None, max_length=0)
CAPTION_DECODING = dict(IMAGE_DECODING, scheme="autoregressive", temperature=0.0,
                        temperature_schedule="constant")


def base(inputs, targets, chained=False) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "generate"
  c.seed = 0
  c.init = ""  # The pretraining workdir: --config.init=DIR.
  # Held-out scenes: the shared 64 px dataset (central view at evaluation).
  c.data = config_files.load(__file__, "../data/scenes64.py").get_config().data
  c.data.batch_size = 32
  c.split = "test"
  c.num_samples = 256  # 0: the whole split.
  c.grid_rows = 8
  # VQ tokenizers by name (searched as m4.tokenizers.load does) or directory;
  # "": the ones the pretraining run used (its config.json's `tokenizers`).
  c.tokenizers = ml_collections.ConfigDict(dict(rgb="", depth="", semseg=""))
  c.pixel_normalization = "symmetric"  # Pixel inputs; "imagenet" for a converted 4M's rgb@224.
  c.diffusion_steps = 25  # DDIM steps of a converted 4M DiVAE tokenizer's decode (4M's demo: 25).
  c.inputs = tuple(inputs)
  c.targets = tuple(targets)
  c.chained = chained
  c.decoding = ml_collections.ConfigDict()
  for name in targets:
    text = modalities.get(name).is_sequence if name in modalities.names() else name == "caption"
    c.decoding[name] = dict(CAPTION_DECODING if text else IMAGE_DECODING)
  c.use_cache = True
  c.presence_min_pixels = 8
  return c
