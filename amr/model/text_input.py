"""What the text encoder is given, importing nothing heavy: texts normalised
(lowercase, no punctuation) and cut at MAX_TOKENS WordPiece tokens, for
training, indexing and queries alike, by the torch encoder (amr.model.text) and
the ONNX query encoder (amr.model.query_encoder); the default model and the poolings."""

from __future__ import annotations

import re
from typing import Literal

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
MAX_TOKENS = 32  # [CLS] and [SEP] included
Pooling = Literal["cls", "mean"]
POOLINGS: tuple[Pooling, ...] = ("cls", "mean")

_PUNCTUATION = re.compile(r"[^\w\s]|_")
_WHITESPACE = re.compile(r"\s+")


def normalize_text(s: str) -> str:
    """Lowercase, punctuation replaced by a space, whitespace collapsed."""
    return _WHITESPACE.sub(" ", _PUNCTUATION.sub(" ", s.lower())).strip()
