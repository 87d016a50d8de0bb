"""Answer metrics: SQuAD-normalised EM, sub-EM and token F1; boxed-answer and think handling.

Every ``answers`` argument accepts one gold string or a list of them; the score is the best
over the list (0.0 for an empty list).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

Answers = str | Sequence[str]

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{")


def _as_list(answers: Answers) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, drop punctuation and a/an/the, collapse whitespace."""
    text = text.lower().translate(_PUNCT_TABLE)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Answers) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in _as_list(answers)))


def sub_exact_match(prediction: str, answers: Answers) -> float:
    """MemAgent's sub-EM: 1.0 if any normalised gold answer is a substring of the prediction.

    Both sides are SQuAD-normalised first, so "Paris" matches "It is Paris, France.". Only the
    gold-in-prediction direction counts: MemAgent's eval script also accepts the prediction
    inside the gold, which rewards empty or one-word guesses, so that direction is left out.
    A gold answer that normalises to nothing (e.g. "The") matches only an empty prediction.
    """
    pred = normalize_answer(prediction)
    for answer in _as_list(answers):
        gold = normalize_answer(answer)
        if (gold and gold in pred) or (not gold and not pred):
            return 1.0
    return 0.0


def _f1_one(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, answers: Answers) -> float:
    """SQuAD token F1 between normalised texts, the maximum over the gold answers."""
    pred_tokens = normalize_answer(prediction).split()
    scores = [_f1_one(pred_tokens, normalize_answer(a).split()) for a in _as_list(answers)]
    return max(scores, default=0.0)


def _match_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx``, or None if it is never closed."""
    depth = 0
    for i in range(open_idx, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (nested braces kept), or None.

    ``\\boxed{\\boxed{x}}`` gives ``\\boxed{x}``: a box inside another box is part of its content.
    An unclosed ``\\boxed{`` is ignored.
    """
    found: str | None = None
    pos = 0
    while (m := _BOXED.search(text, pos)) is not None:
        close = _match_brace(text, m.end() - 1)
        if close is None:
            pos = m.end()
            continue
        found = text[m.end() : close]
        pos = close + 1
    return found


def strip_think(text: str) -> str:
    """Remove ``<think>...</think>`` reasoning blocks.

    Also drops an unterminated ``<think>`` block (from the tag to the end: generation stopped
    while thinking) and everything before a ``</think>`` whose opening tag was in the prompt.
    """
    text = _THINK_BLOCK.sub("", text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
    opened = _THINK_OPEN.search(text)
    if opened is not None:
        text = text[: opened.start()]
    return text
