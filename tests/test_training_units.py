"""Trajectory advantages, reward components, the synthetic task and config errors."""

from __future__ import annotations

import pytest
import torch

from memfactory_core.config import validate_config
from memfactory_core.data.episode import QA, Episode
from memfactory_core.errors import ValidationError
from memfactory_core.pipeline.runtime import RolloutResult
from memfactory_core.pipeline.trace import Trace, TraceStep
from memfactory_core.training.advantages import group_advantages
from memfactory_core.training.config import TrainConfig
from memfactory_core.training.rewards import RewardContext, compute_rewards
from memfactory_core.training.synthetic import build_synthetic
from tests.fakes import CharTokenizer


def test_group_advantages_std_on_off_and_zero_variance() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    none = group_advantages(rewards, 4, "none")
    assert none.advantages.tolist() == pytest.approx([0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0])
    assert (none.zero_std_groups, none.groups, none.frac_zero_std) == (1, 2, 0.5)
    group = group_advantages(rewards, 4, "group")
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std()
    assert group.advantages[:4].tolist() == pytest.approx(
        (torch.tensor([0.5, -0.5, 0.5, -0.5]) / (std + 1e-4)).tolist())
    assert group.advantages[4:].tolist() == [0.0] * 4
    batch = group_advantages(rewards, 4, "batch")
    assert batch.advantages[0].item() == pytest.approx(0.5 / (rewards.std().item() + 1e-4))
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(rewards, 3)


def _result(answer: str | None, boxed: bool, memory: str, gold: str = "Paris") -> RolloutResult:
    ep = Episode(id="e", context="", questions=[QA(id="q", question="where?", answers=[gold])])
    step = TraceStep(lane="query", slot=0, component="boxed_answerer", extra={"boxed": boxed})
    trace = Trace(rollout_id="r", episode_id="e", question_id="q", steps=[step], answer=answer,
                  final_memory=memory)
    return RolloutResult(ep, ep.questions[0], 0, answer, trace)


def test_reward_components_and_weighted_total() -> None:
    cfg = validate_config({
        "pipeline": "memagent", "model": "tiny-random", "data": {"synthetic": {}},
        "output_dir": "x",
        "rewards": [{"name": "boxed_em", "weight": 1.0}, {"name": "sub_em", "weight": 0.5},
                    {"name": "f1", "weight": 0.0}, {"name": "format", "weight": 0.25},
                    {"name": "memory_length", "weight": 1.0, "budget": 10}],
    }, TrainConfig)
    results = [_result("Paris", True, "m" * 5), _result("in Paris, France", False, "m" * 15),
               _result("Rome", True, "m" * 40)]
    totals, comps = compute_rewards(results, cfg.rewards, RewardContext(CharTokenizer()))
    assert comps["boxed_em"] == [1.0, 0.0, 0.0]
    assert comps["sub_em"] == [1.0, 1.0, 0.0]
    assert comps["format"] == [1.0, 0.0, 1.0]
    assert comps["memory_length"] == [0.0, -0.5, -1.0]
    assert comps["f1"][0] == 1.0
    assert totals == pytest.approx([1.75, 0.0, -0.75])


def test_config_errors_name_the_field() -> None:
    base = {"pipeline": "memagent", "model": "tiny-random", "data": {"synthetic": {}},
            "output_dir": "x"}
    with pytest.raises(ValidationError) as err:
        validate_config({**base, "loss_type": "ppo", "num_generations": 1,
                         "rewards": [{"name": "nope"}]}, TrainConfig)
    text = str(err.value) + " ".join(f"{p.location} {p.message}" for p in err.value.problems)
    for field in ("loss_type", "num_generations", "rewards", "nope"):
        assert field in text
    with pytest.raises(ValidationError, match=r"budget"):
        validate_config({**base, "rewards": [{"name": "memory_length"}]}, TrainConfig)
    with pytest.raises(ValidationError):
        validate_config({**base, "data": {"path": "a.jsonl", "synthetic": {}}}, TrainConfig)


def test_synthetic_task_is_seeded_and_answerable() -> None:
    a, b = build_synthetic(5, facts=3, seed=1), build_synthetic(5, facts=3, seed=1)
    assert [e.model_dump() for e in a] == [e.model_dump() for e in b]
    for ep in a:
        qa = ep.questions[0]
        key = qa.meta["key"]
        assert f"The {key} is {qa.answers[0]}." in ep.context
        assert key in qa.question
