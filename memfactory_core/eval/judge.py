"""An LLM judge: marks each prediction CORRECT or WRONG against the gold answer."""

from __future__ import annotations

from collections.abc import Sequence

from memfactory_core.llm.base import LLMBackend, SamplingParams

JUDGE_TEMPLATE = """\
You grade answers to questions about a conversation. Compare the generated answer with the
gold answer. Count it as CORRECT when it means the same thing or contains the gold answer,
even if it is longer or worded differently; for dates, the same date in another format is
CORRECT. Otherwise it is WRONG.

Question: {question}
Gold answer: {gold}
Generated answer: {prediction}

Reply with one word: CORRECT or WRONG."""


def judge_prompt(question: str, gold: str, prediction: str) -> list[dict[str, str]]:
    text = (JUDGE_TEMPLATE.replace("{question}", question).replace("{gold}", gold)
            .replace("{prediction}", prediction or "(no answer)"))
    return [{"role": "user", "content": text}]


def read_verdict(text: str) -> float:
    """1.0 for a CORRECT verdict, 0.0 otherwise (WRONG, or anything unreadable)."""
    words = text.strip().upper().replace(".", " ").split()
    return 1.0 if words and words[0] == "CORRECT" else 0.0


def judge_answers(judge: LLMBackend, items: Sequence[tuple[str, str, str]]) -> list[float]:
    """Verdicts for ``(question, gold, prediction)`` triples, in one batched call."""
    if not items:
        return []
    gens = judge.generate([judge_prompt(*item) for item in items],
                          SamplingParams(max_new_tokens=4, temperature=0.0))
    return [read_verdict(g.text) for g in gens]
