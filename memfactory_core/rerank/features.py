"""Word overlap between a question and a memory: the one feature besides embeddings that the
reranker may weigh (dense sentence embeddings blur names and rare words that a question and
its evidence share)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(_WORD.findall(
    "a an and are as at be been but by can could did do does for from had has have he her "
    "him his how i in is it its me my of on or our she so some that the their them they "
    "this to too was we were what when where which who whom whose why will with would you "
    "your says said tells about now just also very not any kind"))


def content_words(text: str, ignore: Iterable[str] = ()) -> set[str]:
    """Lower-cased words of ``text`` that carry content (no stop words, none of ``ignore``),
    a plural or third-person ``s`` taken off."""
    skip = set(ignore)
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in _WORD.findall(text.lower())
            if len(w) > 2 and w not in STOPWORDS and w not in skip}


def word_overlap(question: str, texts: Sequence[str]) -> list[float]:
    """For each text: the share of the question's content words it contains (0 when the
    question has none)."""
    wanted = content_words(question)
    if not wanted:
        return [0.0] * len(texts)
    return [len(wanted & content_words(t)) / len(wanted) for t in texts]


def overlap_tensor(questions: Sequence[str], candidates: Sequence[Sequence[dict]],
                   width: int) -> torch.Tensor:
    """``(B, width)`` word overlap of each question with its candidates' texts (0 padding)."""
    out = torch.zeros(len(questions), max(width, 1))
    for i, (question, cands) in enumerate(zip(questions, candidates, strict=True)):
        if cands:
            out[i, : len(cands)] = torch.tensor(word_overlap(question,
                                                             [c["text"] for c in cands]))
    return out
