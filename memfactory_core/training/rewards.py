"""Named reward components over rollout results; a trajectory's reward is their weighted sum.

Each component scores a whole batch of :class:`RolloutResult` at once (an LLM judge makes one
batched call) and is logged under its own name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import LLMBackend, SamplingParams, TextTokenizer
from memfactory_core.metrics.qa import exact_match, f1, sub_exact_match
from memfactory_core.pipeline.runtime import RolloutResult

ScoreFn = Callable[[Sequence[RolloutResult], dict[str, Any], "RewardContext"], list[float]]


@dataclass
class RewardContext:
    """What reward functions may need beyond the results: the policy's tokenizer, and
    clients built once per run (the judge)."""

    tokenizer: TextTokenizer
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reward:
    """A registered reward component: its scorer, allowed parameters and required ones."""

    fn: ScoreFn
    description: str
    params: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()

    def check(self, params: dict[str, Any]) -> None:
        unknown = set(params) - self.params
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}; "
                             f"allowed: {sorted(self.params) or 'none'}")
        missing = self.required - set(params)
        if missing:
            raise ValueError(f"missing parameter(s) {sorted(missing)}")


def _boxed_em(results: Sequence[RolloutResult], p: dict[str, Any], ctx: RewardContext
              ) -> list[float]:
    return [exact_match(r.answer or "", r.qa.answers) if r.boxed else 0.0 for r in results]


def _sub_em(results: Sequence[RolloutResult], p: dict[str, Any], ctx: RewardContext
            ) -> list[float]:
    return [sub_exact_match(r.answer or "", r.qa.answers) for r in results]


def _em(results: Sequence[RolloutResult], p: dict[str, Any], ctx: RewardContext) -> list[float]:
    return [exact_match(r.answer or "", r.qa.answers) for r in results]


def _f1(results: Sequence[RolloutResult], p: dict[str, Any], ctx: RewardContext) -> list[float]:
    return [f1(r.answer or "", r.qa.answers) for r in results]


def _format(results: Sequence[RolloutResult], p: dict[str, Any], ctx: RewardContext
            ) -> list[float]:
    return [float(r.boxed) for r in results]


def _memory_length(results: Sequence[RolloutResult], p: dict[str, Any], ctx: RewardContext
                   ) -> list[float]:
    """``-(tokens over budget) / budget`` of the final memory, floored at -1 (0 within it)."""
    budget = int(p["budget"])
    if budget < 1:
        raise MemFactoryError("reward memory_length: budget must be at least 1")
    out = []
    for r in results:
        memory = r.trace.final_memory
        n = len(ctx.tokenizer.encode(memory if isinstance(memory, str) else str(memory or "")))
        out.append(-min(1.0, max(0, n - budget) / budget))
    return out


def _malformed_ops(results: Sequence[RolloutResult], p: dict[str, Any], ctx: RewardContext
                   ) -> list[float]:
    """Minus the share of memory-manager replies in the trajectory that were malformed."""
    out = []
    for r in results:
        decided = sum(int(s.extra.get("decisions", 0)) for s in r.steps
                      if "malformed" in s.extra)
        bad = sum(int(s.extra["malformed"]) for s in r.steps if "malformed" in s.extra)
        out.append(-bad / decided if decided else 0.0)
    return out


JUDGE_PROMPT = """\
Decide whether the predicted answer to the question means the same as one of the reference
answers. Reply with one word: yes or no.

Question: {question}
Reference answers: {answers}
Predicted answer: {prediction}"""

_YES = re.compile(r"^\W*yes\b", re.IGNORECASE)


def _llm_judge(results: Sequence[RolloutResult], p: dict[str, Any], ctx: RewardContext
               ) -> list[float]:
    """1.0 when an LLM on an OpenAI-compatible endpoint says the prediction is correct."""
    judge: LLMBackend | None = ctx.cache.get("llm_judge")
    if judge is None:
        from memfactory_core.llm.openai_backend import OpenAIBackend

        judge = OpenAIBackend(p["model"], p.get("base_url"),
                              api_key_env=p.get("api_key_env"))
        ctx.cache["llm_judge"] = judge
    prompts = [[{"role": "user", "content": JUDGE_PROMPT.format(
        question=r.qa.question, answers="; ".join(r.qa.answers), prediction=r.answer or "")}]
        for r in results]
    gens = judge.generate(prompts, SamplingParams(max_new_tokens=4, temperature=0.0))
    return [1.0 if _YES.match(g.text) else 0.0 for g in gens]


REWARDS: dict[str, Reward] = {
    "boxed_em": Reward(_boxed_em, "Exact match of the \\boxed{} answer (0 without a box)."),
    "em": Reward(_em, "Exact match of the prediction (boxed or fallback text)."),
    "sub_em": Reward(_sub_em, "A normalised gold answer occurs in the prediction."),
    "f1": Reward(_f1, "SQuAD token F1 of the prediction."),
    "format": Reward(_format, "1 when the answer is given in a \\boxed{}."),
    "malformed_ops": Reward(
        _malformed_ops, "Penalty for malformed memory-manager replies (bad JSON, unknown op "
        "or id): minus their share of the trajectory's decisions (0 to -1).",
    ),
    "memory_length": Reward(
        _memory_length, "Penalty for final memories longer than `budget` tokens (0 to -1).",
        frozenset({"budget"}), frozenset({"budget"}),
    ),
    "llm_judge": Reward(
        _llm_judge, "An LLM judge over an OpenAI-compatible endpoint (key from api_key_env).",
        frozenset({"model", "base_url", "api_key_env"}), frozenset({"model"}),
    ),
}


def compute_rewards(
    results: Sequence[RolloutResult],
    specs: Sequence[Any],
    ctx: RewardContext,
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted total per result and each component's raw scores by name."""
    components: dict[str, list[float]] = {}
    totals = [0.0] * len(results)
    for spec in specs:
        reward = REWARDS[spec.name]
        scores = reward.fn(results, spec.params, ctx)
        components[spec.name] = scores
        for i, s in enumerate(scores):
            totals[i] += spec.weight * s
    return totals, components
