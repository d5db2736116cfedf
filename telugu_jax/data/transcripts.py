"""Telugu transcripts as character ids, for the S2S encoder's auxiliary CTC loss.

A fixed vocabulary, the same for every corpus: 0 is the CTC blank, 1 a word boundary, and
`2 + (c - U+0C00)` each code point `c` of the Unicode Telugu block (U+0C00–U+0C7F). Anything
else (punctuation, digits, Latin letters, zero-width joiners) is not spoken as a character of
its own: punctuation and whitespace become a word boundary, the rest is dropped; boundaries are
collapsed and trimmed.
"""

from __future__ import annotations

import unicodedata

import numpy as np

BLANK = 0
WORD_BOUNDARY = 1
TELUGU_FIRST, TELUGU_LAST = 0x0C00, 0x0C7F
VOCAB_SIZE = 2 + TELUGU_LAST - TELUGU_FIRST + 1  # 130


def encode(text: str) -> list[int]:
  """Character ids of `text` (NFC-normalised), without blanks."""
  ids: list[int] = []
  for char in unicodedata.normalize("NFC", text):
    code = ord(char)
    if TELUGU_FIRST <= code <= TELUGU_LAST:
      ids.append(2 + code - TELUGU_FIRST)
    elif char.isspace() or unicodedata.category(char).startswith("P"):
      if ids and ids[-1] != WORD_BOUNDARY:
        ids.append(WORD_BOUNDARY)
  while ids and ids[-1] == WORD_BOUNDARY:
    ids.pop()
  return ids


def decode(ids: list[int] | np.ndarray) -> str:
  """Inverse of `encode` (blanks skipped; a word boundary reads as a space)."""
  return "".join(" " if i == WORD_BOUNDARY else chr(TELUGU_FIRST + i - 2)
                 for i in map(int, ids) if i != BLANK)


def ctc_frames_needed(ids: list[int]) -> int:
  """The fewest input frames a CTC alignment of `ids` needs: one per label, plus a blank
  between each two equal neighbours."""
  return len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))


def fit(text: str | None, max_tokens: int, frames: int) -> tuple[np.ndarray, np.int32]:
  """`(ids int32 [max_tokens] zero-padded, length)` of `text`; length 0 (no transcript to
  learn from) when there is none, it is longer than `max_tokens`, or `frames` input frames
  cannot align it."""
  ids = encode(text) if text else []
  if len(ids) > max_tokens or ctc_frames_needed(ids) > frames:
    ids = []
  out = np.zeros(max_tokens, np.int32)
  out[:len(ids)] = ids
  return out, np.int32(len(ids))
