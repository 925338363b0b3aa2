"""The WordPiece caption tokenizer, trained on the scenes dataset's captions.

    python -m m4.main --config=configs/tokenizers/caption_scenes.py --workdir=workdirs/text_tokenizer

writes workdirs/text_tokenizer/wordpiece_scenes.json (plus caption_lengths.png
and summary.json). The committed tokenizers/wordpiece_scenes.json, which the
`caption` modality uses by name, is that file, copied:

    cp workdirs/text_tokenizer/wordpiece_scenes.json tokenizers/

The data is configs/scenes.py's dataset (workdirs/scenes/data, rendered on
first use; about 3 minutes with 2 workers on 2 idle cores, then reused).

`:shared` trains one vocabulary for the caption and 4M-21's boxes, palette,
metadata and instances texts (m4.data.scene_sequences), as 4M shares one WordPiece
vocabulary across its text-like modalities: wordpiece_scenes21.json, the
tokenizer those registry entries name (committed in tokenizers/). Its data
is the scenes rendered with those extras (workdirs/scenes/data21).
"""

import string

import ml_collections

from m4 import config_files
from m4.data import pipeline


def get_config(arg=None):
  variant = config_files.variant(arg, __file__, ("default", "shared"))
  config = ml_collections.ConfigDict()
  config.job = "text_tokenizer"
  # The same dataset as configs/scenes.py, so either command makes it once.
  config.data = pipeline.data_config(kind="scenes", dir="workdirs/scenes/data", workers=2,
                                     modalities=("caption",))
  config.modality = "caption"  # Its registry entry bounds vocab_size; num_tokens is checked.
  config.shared_with = ()  # More sequence modalities whose texts share the vocabulary.
  config.num_captions = 0  # Training captions read from data.train_split; 0: all.
  config.num_eval_captions = 0  # Captions of data.eval_split for the summary; 0: all.
  config.tokenizer = ml_collections.ConfigDict(dict(
      name="wordpiece_scenes",  # Output: WORKDIR/<name>.json.
      vocab_size=512,  # At most the caption modality's vocab_size.
      num_sentinels=200,  # [S_0]..[S_199] = ids 4..203, as 4M.
      lowercase=True,  # BERT normalisation with lower-casing, as 4M.
      min_frequency=0,
      # Always in the vocabulary (word-start and ## forms), so any lower-case
      # ASCII text encodes without [UNK], not only the scenes' words.
      initial_alphabet=string.ascii_lowercase + string.digits + string.punctuation,
      # Keep only the pieces the captions are encoded with (plus the alphabet):
      # the library's trainer breaks ties in hash order, so the intermediate
      # pieces it keeps change from run to run; with pruning, the same
      # captions give the same file, byte for byte.
      prune_unused=True,
  ))
  if variant == "shared":
    config.data.dir = "workdirs/scenes/data21"
    config.data.extras = ("instance", "boxes", "palette", "metadata")
    # Raw keys: semseg gives the image size of the boxes and the instances' classes.
    config.data.modalities = ("caption", "semseg", "boxes", "palette", "metadata", "instance")
    config.shared_with = ("boxes", "palette", "metadata", "instances")
    config.tokenizer.name = "wordpiece_scenes21"
  return config
