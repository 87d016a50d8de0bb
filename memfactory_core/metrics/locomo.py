"""LoCoMo's answer metrics as its official evaluation computes them, BLEU-1 and Recall@k.

Token F1 (LoCoMo): answers are lowercased, commas, punctuation and the words a/an/the/and
removed, tokens Porter-stemmed. Category rules: 1 (multi-hop) splits prediction and gold on
commas and averages, over gold parts, the best F1 of any predicted part; 3 (open-domain)
keeps the gold up to its first ';'; 5 (adversarial) scores 1 when the prediction abstains
("not mentioned", "no information available"); other categories use plain token F1.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

from nltk.stem import PorterStemmer
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

_STEMMER = PorterStemmer()
_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
_ABSTAIN = ("no information available", "not mentioned")
_BLEU_TOKEN = re.compile(r"\w+|[^\w\s]")
_SMOOTH = SmoothingFunction().method1


def locomo_normalize(text: str) -> str:
    text = text.replace(",", "").lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


@lru_cache(maxsize=100_000)
def _stem(word: str) -> str:
    return _STEMMER.stem(word)


def token_f1(prediction: str, gold: str) -> float:
    """LoCoMo's token F1 of one prediction against one gold answer (stemmed tokens)."""
    pred = [_stem(w) for w in locomo_normalize(prediction).split()]
    ref = [_stem(w) for w in locomo_normalize(gold).split()]
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def multi_answer_f1(prediction: str, gold: str) -> float:
    """Multi-hop F1: gold and prediction split on commas; mean over gold parts of the best
    F1 of any predicted part."""
    preds = [p.strip() for p in prediction.split(",")]
    golds = [g.strip() for g in gold.split(",")]
    return sum(max(token_f1(p, g) for p in preds) for g in golds) / len(golds)


def abstains(prediction: str) -> bool:
    low = prediction.lower()
    return any(phrase in low for phrase in _ABSTAIN)


def locomo_f1(prediction: str, gold: str, category: int | str | None,
              abstention: bool = False) -> float:
    """The official LoCoMo score of a prediction for a question of ``category``."""
    if category == 5 or abstention:
        return float(abstains(prediction))
    if category == 1:
        return multi_answer_f1(prediction, gold)
    if category == 3:
        gold = gold.split(";")[0].strip()
    return token_f1(prediction, gold)


def bleu1(prediction: str, gold: str) -> float:
    """Sentence BLEU-1 (nltk, smoothing method 1) on lowercased word and punctuation tokens."""
    pred = _BLEU_TOKEN.findall(prediction.lower())
    ref = _BLEU_TOKEN.findall(gold.lower())
    if not pred or not ref:
        return 0.0
    return float(sentence_bleu([ref], pred, weights=(1, 0, 0, 0), smoothing_function=_SMOOTH))


def recall_at_k(retrieved_turns: Sequence[Sequence[str]], evidence: Sequence[str], k: int
                ) -> float | None:
    """Share of the evidence turn ids found among the source turns of the top ``k``
    retrieved entries (None when the question has no evidence ids)."""
    wanted = set(evidence)
    if not wanted:
        return None
    found = {t for turns in retrieved_turns[:k] for t in turns}
    return len(wanted & found) / len(wanted)
