"""The WordPiece text tokenizer, with 4M's layout of special ids.

    tok = text.load("wordpiece_scenes")        # tokenizers/wordpiece_scenes.json
    ids = tok.encode("A large red sphere.")    # word-piece ids, no [EOS]
    tok.decode(ids)                            # "a large red sphere."
    tok.encode_padded("a red cube", 48)        # int32 (48,): ids, [EOS], [PAD]...

Files are the `tokenizers` library's JSON, so 4M's released
`text_tokenizer_4m_wordpiece_30k.json` loads as it is. The id layout is 4M's and
`load` checks it: `[PAD]`=0, `[UNK]`=1, `[SOS]`=2, `[EOS]`=3, sentinels
`[S_0]..[S_{n-1}]` = ids 4..3+n (n = 200 in 4M and m4), then everything else
(word pieces; 4M's file also holds coordinate and COCO class tokens).

Normalisation (BERT's, as in 4M). For any text whose characters are in the
vocabulary, `decode(encode(text)) == normalize_text(text)`, where
`normalize_text`:
  1. drops NUL, U+FFFD and control/format characters (Unicode C*, except tab,
     newline and carriage return) and turns every whitespace character into a
     space; puts spaces around CJK ideographs;
  2. strips accents (NFD, then drops non-spacing marks) and lower-cases
     (both only when the tokenizer is lower-cased, m4's and 4M's are);
  3. splits into words at whitespace and at every punctuation character
     (ASCII punctuation and symbols such as `-`, `'`, `$`, and Unicode P*),
     each punctuation character becoming a word of its own;
  4. joins the words with single spaces, except that `.`, `,`, `!` and `?`
     attach to the word before them (the WordPiece decoder's cleanup).
So "  A Red  CUBE,left of the Sphère! " -> "a red cube, left of the sphere!"
and "don't" -> "don ' t". A character outside the vocabulary becomes `[UNK]`,
and so does a word longer than 100 characters. Special-token strings in the
text (e.g. "[S_1]") are read as those tokens.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from typing import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import trainers

PAD, UNK, SOS, EOS = "[PAD]", "[UNK]", "[SOS]", "[EOS]"
SPECIALS = (PAD, UNK, SOS, EOS)  # Ids 0..3, in this order.
FIRST_SENTINEL_ID = len(SPECIALS)
_SENTINEL_RE = re.compile(r"^\[S_(\d+)\]$")

# Tokenizer assets live in the repository's top-level `tokenizers/` folder
# (not a Python package: an __init__.py there would shadow the library).
ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tokenizers")


def sentinel_token(i: int) -> str:
  return f"[S_{i}]"


class TextTokenizer:
  """A `tokenizers.Tokenizer` with 4M's special ids, checked on construction."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, path: str = "<in memory>"):
    self.tokenizer = tokenizer
    self.path = path
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    for want_id, token in enumerate(SPECIALS):
      if vocab.get(token) != want_id:
        raise ValueError(f"text tokenizer {path}: {token} has id {vocab.get(token)},"
                         f" 4M's layout needs {want_id}.")
    n = sum(1 for token in vocab if _SENTINEL_RE.match(token))
    if not n:
      raise ValueError(f"text tokenizer {path}: no sentinel tokens [S_0], [S_1], ...")
    for i in range(n):
      if vocab.get(sentinel_token(i)) != FIRST_SENTINEL_ID + i:
        raise ValueError(
            f"text tokenizer {path}: its {n} sentinels must be [S_0]..[S_{n - 1}] with ids"
            f" {FIRST_SENTINEL_ID}..{FIRST_SENTINEL_ID + n - 1}; {sentinel_token(i)} has id"
            f" {vocab.get(sentinel_token(i))}.")
    self.num_sentinels = n
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    if max(vocab.values()) != self.vocab_size - 1:
      raise ValueError(f"text tokenizer {path}: ids are not contiguous 0..{self.vocab_size - 1}.")
    self.pad_id, self.unk_id, self.sos_id, self.eos_id = range(len(SPECIALS))
    spec = json.loads(tokenizer.to_str())
    normalizer = spec.get("normalizer") or {}
    # None when the normalizer is not BERT's: normalize_text does not apply.
    self.lowercase = (bool(normalizer.get("lowercase"))
                      if normalizer.get("type") == "BertNormalizer" else None)

  def __repr__(self):
    return (f"TextTokenizer({self.path!r}, vocab_size={self.vocab_size},"
            f" num_sentinels={self.num_sentinels})")

  def sentinel_id(self, i: int) -> int:
    """The id of `[S_i]`."""
    if not 0 <= i < self.num_sentinels:
      raise IndexError(f"sentinel {i} out of range: {self.path} has {self.num_sentinels}.")
    return FIRST_SENTINEL_ID + i

  def is_sentinel(self, ids) -> np.ndarray:
    ids = np.asarray(ids)
    return (ids >= FIRST_SENTINEL_ID) & (ids < FIRST_SENTINEL_ID + self.num_sentinels)

  def encode(self, text: str) -> list[int]:
    """Word-piece ids of `text` (no [SOS]/[EOS] added)."""
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def encode_padded(self, text: str, length: int) -> np.ndarray:
    """int32 (length,): ids + [EOS], cut to `length`, then [PAD]s (as 4M).

    As in 4M, [EOS] is appended before cutting, so a caption longer than
    `length - 1` word pieces loses its [EOS].
    """
    ids = (self.encode(text) + [self.eos_id])[:length]
    out = np.full((length,), self.pad_id, np.int32)
    out[:len(ids)] = ids
    return out

  def decode(self, ids, *, keep_sentinels: bool = False) -> str:
    """Text of `ids`, without [PAD], [SOS], [EOS] and (unless asked) sentinels.

    [UNK] stays visible, as do other added tokens (4M's class names are
    'special' in its file, so the library's skip_special_tokens would drop them).
    """
    ids = np.asarray(ids, np.int64).reshape(-1)
    drop = (ids == self.pad_id) | (ids == self.sos_id) | (ids == self.eos_id)
    if not keep_sentinels:
      drop |= self.is_sentinel(ids)
    return self.tokenizer.decode(ids[~drop].tolist(), skip_special_tokens=False)

  def decode_batch(self, ids_batch, *, keep_sentinels: bool = False) -> list[str]:
    return [self.decode(ids, keep_sentinels=keep_sentinels) for ids in ids_batch]

  def normalize(self, text: str) -> str:
    """What `decode(encode(text))` gives for in-vocabulary text."""
    if self.lowercase is None:
      raise ValueError(f"text tokenizer {self.path}: normalize() needs a BertNormalizer.")
    return normalize_text(text, lowercase=self.lowercase)

  def save(self, path: str) -> str:
    """Writes the library JSON atomically (temp file + rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    self.tokenizer.save(tmp, pretty=True)
    os.replace(tmp, path)
    return path


def resolve(name_or_path: str) -> str:
  """A path as it is, or a name `X` as `tokenizers/X.json` in the repository."""
  if os.path.exists(name_or_path) or name_or_path.endswith(".json") or os.sep in name_or_path:
    return name_or_path
  return os.path.join(ASSETS_DIR, f"{name_or_path}.json")


def load(name_or_path: str) -> TextTokenizer:
  """Loads a tokenizer JSON by path, or by name from the `tokenizers/` folder."""
  path = resolve(name_or_path)
  if not os.path.isfile(path):
    known = sorted(f[:-5] for f in os.listdir(ASSETS_DIR) if f.endswith(".json")) if (
        os.path.isdir(ASSETS_DIR)) else []
    raise FileNotFoundError(f"text tokenizer {name_or_path!r}: no file {path}"
                            f" (names in {ASSETS_DIR}: {known}).")
  try:
    tok = tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"text tokenizer {path}: not a tokenizers JSON file ({e}).") from None
  return TextTokenizer(tok, path)


def train(texts: Sequence[str], *, vocab_size: int, num_sentinels: int = 200,
          lowercase: bool = True, min_frequency: int = 0, initial_alphabet: str = "",
          prune_unused: bool = True, show_progress: bool = False) -> TextTokenizer:
  """Trains a WordPiece tokenizer with 4M's layout and normaliser.

  After the library's trainer: both forms (word start and `##`) of each
  `initial_alphabet` character are added, unused pieces are dropped if
  `prune_unused`, and word pieces are numbered after the special ids by
  (length, continuation, text). The library breaks ties between equally
  frequent merges in hash-map order, which changes from run to run; the
  intermediate pieces it keeps vary, the ones the text is encoded with do not
  (once merges run out below `vocab_size`), so with pruning the same text
  gives the same file. WordPiece encodes by longest match, whatever the ids.

  Args:
    texts: the training text (e.g. captions).
    vocab_size: the largest vocabulary, special ids included (the trainer may
      stop below it when the text has no more pairs to merge).
    num_sentinels: `[S_0]..[S_{n-1}]`, ids 4..3+n.
    lowercase: BERT normalisation with lower-casing and accent stripping.
    min_frequency: pairs seen fewer times are not merged.
    initial_alphabet: characters always in the vocabulary (so text made of
      them never gives [UNK]), whether the training text has them or not.
    prune_unused: keep only the pieces `texts` are encoded with, plus the
      alphabet.
    show_progress: the library's progress bar.
  """
  tok = tokenizers.Tokenizer(models.WordPiece(unk_token=UNK))
  tok.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix="##")
  specials = list(SPECIALS) + [
      tokenizers.AddedToken(sentinel_token(i), single_word=True, normalized=False)
      for i in range(num_sentinels)]
  trainer = trainers.WordPieceTrainer(
      vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
      special_tokens=specials, initial_alphabet=sorted(set(initial_alphabet)),
      continuing_subword_prefix="##")
  tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
  used = None
  if prune_unused:
    used = {i for e in tok.encode_batch(list(texts), add_special_tokens=False) for i in e.ids}
  return TextTokenizer(_finish_vocab(tok, initial_alphabet, len(specials), used))


def _finish_vocab(tok: tokenizers.Tokenizer, alphabet: str, num_special: int,
                  used: set[int] | None) -> tokenizers.Tokenizer:
  """Alphabet completed, pieces not in `used` (if given) dropped, renumbered."""
  spec = json.loads(tok.to_str())
  vocab = spec["model"]["vocab"]
  prefix = spec["model"]["continuing_subword_prefix"]
  pieces = {p for p, i in vocab.items() if i >= num_special and (used is None or i in used)}
  for ch in set(alphabet):
    pieces.update((ch,) if _is_punctuation(ch) else (ch, prefix + ch))

  def order(piece):
    cont = piece.startswith(prefix)
    return len(piece) - (len(prefix) if cont else 0), cont, piece

  specials = {p: i for p, i in vocab.items() if i < num_special}
  spec["model"]["vocab"] = {**specials, **{p: num_special + k
                                           for k, p in enumerate(sorted(pieces, key=order))}}
  return tokenizers.Tokenizer.from_str(json.dumps(spec))


# --- BERT normalisation, written out (see the module docstring) ---

_ATTACHING = frozenset(".,!?")  # The WordPiece decoder's cleanup joins these.


def _is_cjk(cp: int) -> bool:
  return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
          or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
          or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_punctuation(ch: str) -> bool:
  cp = ord(ch)
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(ch).startswith("P")


def normalize_text(text: str, *, lowercase: bool = True) -> str:
  """The text that `decode(encode(text))` gives (module docstring, steps 1-4)."""
  chars = []
  for ch in text:
    cat = unicodedata.category(ch)
    if ch in "\t\n\r" or cat == "Zs":
      chars.append(" ")
    elif ord(ch) == 0 or ord(ch) == 0xFFFD or cat.startswith("C"):
      continue
    elif _is_cjk(ord(ch)):
      chars.append(f" {ch} ")
    else:
      chars.append(ch)
  text = "".join(chars)
  if lowercase:
    text = "".join(c for c in unicodedata.normalize("NFD", text)
                   if unicodedata.category(c) != "Mn").lower()
  words = []
  for chunk in text.split():
    word = ""
    for ch in chunk:
      if _is_punctuation(ch):
        if word:
          words.append(word)
        words.append(ch)
        word = ""
      else:
        word += ch
    if word:
      words.append(word)
  out = ""
  for i, word in enumerate(words):
    out += word if (i == 0 or word in _ATTACHING) else f" {word}"
  return out
