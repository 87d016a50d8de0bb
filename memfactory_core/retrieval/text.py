"""Tokenization for lexical retrieval: lowercase words, English stopwords out, Porter stems."""

from __future__ import annotations

import re
from functools import lru_cache

from bm25s.stopwords import STOPWORDS_EN
from nltk.stem import PorterStemmer

_WORD = re.compile(r"\w+")
_STOP = frozenset(STOPWORDS_EN)
_STEMMER = PorterStemmer()


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _STEMMER.stem(word)


def tokenize(text: str) -> list[str]:
    """Stemmed, lowercased word tokens of ``text`` without English stopwords."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP]
