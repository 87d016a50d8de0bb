"""Memory-R1's one-step training: samples, cached banks, rewards of a frozen answerer on the
edited bank, the trainer on tiny-random and the shipped configs through ``memfactory train``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from memfactory_core.config import load_config, validate_config
from memfactory_core.data.loaders import load_episodes
from memfactory_core.errors import MemFactoryError, ValidationError
from memfactory_core.llm.base import SamplingParams
from memfactory_core.memory import MemoryBuildContext, create_memory
from memfactory_core.memory.bank import MemoryBank
from memfactory_core.paths import CONFIGS_DIR, SAMPLE_DATA_DIR
from memfactory_core.pipeline.spec import ResolvedPipeline, validate_spec
from memfactory_core.resources import Resources
from memfactory_core.training.config import RewardSpec, TrainConfig
from memfactory_core.training.memory_r1 import (
    END,
    BankBuilder,
    BankPoint,
    MemoryR1Trainer,
    OneStepRollouts,
    one_step_samples,
    pick_start,
    policy_kind,
)
from memfactory_core.training.rewards import RewardContext, compute_rewards
from memfactory_core.training.trainer import GRPOTrainer, latest_checkpoint
from tests.fakes import CharTokenizer, ScriptedLLM

SAMPLE = SAMPLE_DATA_DIR / "conversations_sample.json"
LOCOMO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "locomo10.json"
TINY = CONFIGS_DIR / "train_memory_r1_manager_tiny.yaml"


def _pipeline(writer: str = "memory_manager", top_k: int = 50) -> ResolvedPipeline:
    slot: dict[str, Any] = {"component": writer}
    if writer == "memory_manager":
        slot.update(role="manager", params={"top_k": 5, "search": "bm25"})
    return validate_spec({
        "name": "mr1", "memory": {"type": "bank", "params": {"embedder": "hashing-32"}},
        "ingest": [{"component": "turn_segmenter"}, {"component": "given_facts"}, slot],
        "query": [{"component": "retriever", "params": {"mode": "bm25", "top_k": top_k}},
                  {"component": "answer_agent", "role": "answer"}],
    })


def _builder(pipeline: ResolvedPipeline, llms: dict[str, Any], mode: str, cache: Path
             ) -> BankBuilder:
    resources = Resources()
    ctx = MemoryBuildContext(CharTokenizer(), resources)

    def new_memory() -> MemoryBank:
        bank = create_memory("bank", pipeline.memory_params, ctx)
        assert isinstance(bank, MemoryBank)
        return bank

    return BankBuilder(pipeline, llms, SamplingParams(), CharTokenizer(), resources,
                       new_memory, mode, cache)


def _points(builder: BankBuilder, episodes: list[Any], kind: str = "manager"
            ) -> tuple[list[Any], dict[tuple[str, str], BankPoint]]:
    items, starts, _ = one_step_samples(episodes, kind)
    points = {}
    for ep in episodes:
        for tid, point in builder.points(ep, starts[ep.id]).items():
            points[(ep.id, tid)] = point
    for item in items:
        if kind == "manager":
            item.meta["turn"] = pick_start(item, points)
    return items, points


def _lindholm_answerer(text: str) -> str:
    return "Nora lives there.\nAnswer: Lindholm" if "Lindholm" in text else "Answer: unknown"


def test_manager_reward_is_the_frozen_answer_on_an_edited_copy_of_the_bank(tmp_path: Path
                                                                            ) -> None:
    pipeline = _pipeline()
    episodes = load_episodes(SAMPLE, conversations=["sample-1"])
    builder = _builder(pipeline, {}, "add_all", tmp_path)
    items, points = _points(builder, episodes)
    item = next(i for i in items if i.questions[0].question == "Where does Nora live?")
    assert item.meta["turn"] == "D2:4"
    point = points[("sample-1", "D2:4")]
    assert [f.text for f in point.facts] == ["Nora moved to Lindholm, close to the library."]
    before = point.bank.snapshot()
    assert not any("Lindholm" in e["text"] for e in before["entries"])

    replies = iter([
        '{"memory": [{"event": "ADD", "text": "Nora moved to Lindholm, close to the library."}]}',
        "I would add it",  # not JSON
        '{"memory": [{"event": "UPDATE", "id": "m99", "text": "Nora lives in Lindholm"}]}',
        '{"memory": [{"event": "MERGE", "id": "m1"}]}',  # unknown op
        '{"memory": [{"event": "NOOP"}]}',
    ])
    manager = ScriptedLLM(lambda text: next(replies))
    answerer = ScriptedLLM(_lindholm_answerer)
    rollouts = OneStepRollouts(pipeline, "manager", "manager",
                               {"manager": manager, "answer": answerer},
                               SamplingParams(temperature=1.0), SamplingParams(),
                               CharTokenizer(), Resources())
    results = rollouts.run([item], points, samples=5)
    assert len(manager.calls) == 1 and len(manager.calls[0][0]) == 5  # one batched call
    assert manager.calls[0][1].temperature == 1.0 and answerer.calls[0][1].temperature == 0.0
    specs = [RewardSpec(name="em"), RewardSpec(name="malformed_ops", weight=0.5)]
    totals, parts = compute_rewards(results, specs, RewardContext(tokenizer=CharTokenizer()))
    assert parts["em"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert parts["malformed_ops"] == [0.0, -1.0, -1.0, -1.0, 0.0]
    assert totals == [1.0, -0.5, -0.5, -0.5, 0.0]
    # the trace keeps each decision with its raw reply; bad ones leave their copy unchanged
    decisions = [r.trace.steps_of("memory_manager")[0].output[0] for r in results]
    assert decisions[0]["valid"] and decisions[0]["ops"][0]["op"] == "ADD"
    assert results[0].trace.steps_of("memory_manager")[0].memory_diff["added"]
    assert [d["valid"] for d in decisions] == [True, False, False, False, True]
    assert "m99" in decisions[2]["error"] and decisions[1]["raw"] == "I would add it"
    assert all(r.trace.steps_of("memory_manager")[0].memory_diff is None for r in results[1:])
    # only the manager's turn belongs to the trajectory's trained role; the cached bank is intact
    assert [t["role"] for t in results[0].turns] == ["manager", "answer"]
    assert point.bank.snapshot() == before


def test_answer_samples_read_the_whole_bank_and_score_their_own_answer(tmp_path: Path) -> None:
    pipeline = _pipeline()
    episodes = load_episodes(SAMPLE, conversations=["sample-1"])
    items, points = _points(_builder(pipeline, {}, "add_all", tmp_path), episodes, "answer")
    assert len(items) == len(episodes[0].questions)
    assert all(i.meta["turn"] == END for i in items)
    final = points[("sample-1", END)].bank
    assert len(final) == sum(len(t.facts) for t in episodes[0].conversation.turns())
    assert policy_kind(pipeline, ["answer"]) == "answer"
    answerer = ScriptedLLM(_lindholm_answerer)
    rollouts = OneStepRollouts(pipeline, "answer", "answer", {"answer": answerer},
                               SamplingParams(temperature=1.0), SamplingParams(),
                               CharTokenizer(), Resources())
    item = next(i for i in items if i.questions[0].question == "Where does Nora live?")
    results = rollouts.run([item], points, samples=3)
    assert [r.answer for r in results] == ["Lindholm"] * 3
    assert answerer.calls[0][1].temperature == 1.0  # the trained role samples
    assert all(r.trace.steps_of("memory_manager") == [] for r in results)


def test_samples_start_at_the_last_evidence_turn_with_facts(tmp_path: Path) -> None:
    episodes = load_episodes(SAMPLE, conversations=["sample-1"])
    items, points = _points(_builder(_pipeline(), {}, "add_all", tmp_path), episodes)
    by_q = {i.questions[0].question: i for i in items}
    # evidence D2:1 and D2:3; D2:3 has no facts, so the sample starts at D2:1
    assert by_q["What is Tomas's job as of June 2024?"].meta["turn"] == "D2:1"
    # evidence D3:5 and D1:6: the later one, with D1:6's fact already in the bank
    pets = by_q["What pets do Nora and Tomas have?"]
    assert pets.meta["turn"] == "D3:5"
    bank = points[("sample-1", "D3:5")].bank
    assert any("Pepper" in e.text for e in bank.active())
    # a question whose evidence lies outside the sessions read is left out and counted
    first = load_episodes(SAMPLE, conversations=["sample-1"], categories=[1, 2, 3, 4])
    first[0].questions[0].evidence = ["D9:9"]
    _, _, skipped = one_step_samples(first, "manager")
    assert skipped == 1


def test_base_manager_bank_is_built_once_and_replayed_from_the_cache(tmp_path: Path) -> None:
    pipeline = _pipeline()
    episodes = load_episodes(SAMPLE, conversations=["sample-1"])

    def add_reply(text: str) -> str:
        fact = text.rsplit("New fact (said on ", 1)[1].split("): ", 1)[1]
        return json.dumps({"memory": [{"event": "ADD", "text": fact.upper()}]})

    base = ScriptedLLM(add_reply)
    built = _builder(pipeline, {"manager": base}, "manager", tmp_path)
    _, points = _points(built, episodes)
    calls = len(base.calls)
    assert calls == sum(1 for t in episodes[0].conversation.turns() if t.facts)
    files = list(tmp_path.glob("sample-1-manager-*.json"))
    assert len(files) == 1
    again = ScriptedLLM(add_reply)
    _, replayed = _points(_builder(pipeline, {"manager": again}, "manager", tmp_path), episodes)
    assert again.calls == []
    assert set(replayed) == set(points)
    for key, point in points.items():
        assert replayed[key].bank.snapshot() == point.bank.snapshot(), key
        assert [f.text for f in replayed[key].facts] == [f.text for f in point.facts]
    final = replayed[("sample-1", END)].bank
    assert all(e.text == e.text.upper() for e in final.active())
    # another model is another cache entry; a damaged cache file is rebuilt
    other = ScriptedLLM(add_reply)
    other.model_name = "other"
    _points(_builder(pipeline, {"manager": other}, "manager", tmp_path), episodes)
    assert other.calls and len(list(tmp_path.glob("sample-1-manager-*.json"))) == 2
    files[0].write_text("{not json", encoding="utf-8")
    fixed = ScriptedLLM(add_reply)
    _points(_builder(pipeline, {"manager": fixed}, "manager", tmp_path), episodes)
    assert len(fixed.calls) == calls
    assert json.loads(files[0].read_text(encoding="utf-8"))["units"]


def test_roles_that_are_not_a_one_step_policy_are_refused() -> None:
    pipeline = _pipeline()
    with pytest.raises(ValidationError, match="one role at a time"):
        policy_kind(pipeline, ["manager", "answer"])
    with pytest.raises(ValidationError, match="neither"):
        policy_kind(pipeline, ["extractor"])
    with pytest.raises(MemFactoryError, match="memory_manager slot"):
        _builder(_pipeline("add_all"), {}, "manager", Path("unused"))
    text = validate_spec({"name": "t", "memory": {"type": "text"},
                          "ingest": [{"component": "token_chunker"},
                                     {"component": "memory_writer", "role": "policy"}],
                          "query": [{"component": "boxed_answerer", "role": "policy"}]})
    with pytest.raises(MemFactoryError, match="needs a bank pipeline"):
        policy_kind(text, ["policy"])


def _tiny(out: Path, **over: Any) -> TrainConfig:
    cfg = load_config(TINY, [f"output_dir={out}"], TrainConfig)
    return validate_config({**cfg.model_dump(), **over}, TrainConfig)


def test_tiny_manager_trainer_trains_only_manager_turns(tmp_path: Path) -> None:
    trainer = GRPOTrainer(_tiny(tmp_path / "run"))
    assert isinstance(trainer, MemoryR1Trainer) and trainer.kind == "manager"
    items = trainer.episodes_for_step(0)
    results, groups = trainer.rollout(items)
    g = trainer.config.num_generations
    assert len(results) == g * len(items) and groups == [i // g for i in range(len(results))]
    adv = torch.linspace(-1.0, 1.0, len(results))
    samples = trainer.turn_samples(results, adv)
    manager_turns = [t for r in results for t in r.turns if t["role"] == "manager"]
    assert len(samples) == len(manager_turns) >= len(results)
    assert all(r.turns[-1]["role"] == "answer" for r in results)  # frozen, not trained
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
              if p.requires_grad}
    trainer.optimize(samples)
    moved = [n for n, p in trainer.model.named_parameters()
             if p.requires_grad and not torch.equal(p, before[n])]
    assert moved and all("lora_" in n for n in moved)
    # the frozen answerer runs with the adapter off: its answers do not depend on the adapter
    point = trainer.points[(items[0].meta["conversation"], items[0].meta["turn"])]
    assert trainer.sampler.query[-1][1].context.llm.model_name.endswith("(base)")
    assert point.facts


def test_shipped_tiny_config_trains_validates_and_resumes(tmp_path: Path) -> None:
    from app.cli import app

    out = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(app, ["train", str(TINY), f"output_dir={out}", "max_steps=2",
                                "--quiet"])
    assert first.exit_code == 0, first.output
    assert latest_checkpoint(out).name == "checkpoint-2"
    second = runner.invoke(app, ["train", str(TINY), f"output_dir={out}", "resume=true",
                                 "--quiet"])
    assert second.exit_code == 0, second.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["turns_per_trajectory"] >= 1.0
    for key in ("rewards/em", "rewards/f1", "rewards/malformed_ops", "reward"):
        assert key in rows[0], key
    assert "eval/reward" in rows[1] and "eval/rewards/em" in rows[2]
    assert rows[1]["eval/samples"] == 7  # sample-2's questions
    assert latest_checkpoint(out).name == "checkpoint-3"
    record = json.loads(next((out / "samples").glob("*.jsonl")).read_text().splitlines()[0])
    step = record["trace"]["steps"][0]
    assert step["component"] == "memory_manager" and "raw" in step["output"][0]


def test_shipped_tiny_answer_config_trains_the_answer_agent(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS_DIR / "train_memory_r1_answer_tiny.yaml",
                      [f"output_dir={tmp_path / 'ans'}", "max_steps=2"], TrainConfig)
    trainer = GRPOTrainer(cfg)
    assert isinstance(trainer, MemoryR1Trainer) and trainer.kind == "answer"
    assert len(trainer.episodes) == 8 and len(trainer.validation) == 7
    results, _ = trainer.rollout(trainer.episodes_for_step(0))
    assert all([t["role"] for t in r.turns] == ["answer"] for r in results)
    assert len(trainer.turn_samples(results, torch.ones(len(results)))) == len(results)
    summary = trainer.train()
    assert summary["steps"] == 2 and latest_checkpoint(tmp_path / "ans").name == "checkpoint-2"


@pytest.mark.data
def test_locomo_manager_samples_see_only_earlier_turns(tmp_path: Path) -> None:
    if not LOCOMO.is_file():
        pytest.skip(f"LoCoMo data not found at {LOCOMO}")
    episodes = load_episodes(LOCOMO, split="train")
    assert [e.id for e in episodes] == ["conv-26"]
    items, points = _points(_builder(_pipeline(), {}, "add_all", tmp_path), episodes)
    order = {t.id: i for i, t in enumerate(episodes[0].conversation.turns())}
    usable = [i for i in items if i.meta["turn"] is not None]
    assert len(usable) >= 100  # of conv-26's 152 questions
    for item in usable:
        start = order[item.meta["turn"]]
        bank = points[("conv-26", item.meta["turn"])].bank
        assert all(order[t] < start for e in bank.active() for t in e.turn_ids)
        assert all(item.meta["turn"] in f.turn_ids for f in
                   points[("conv-26", item.meta["turn"])].facts)


def test_memory_r1_section_is_validated() -> None:
    base = load_config(TINY, ["output_dir=x"], TrainConfig).model_dump()
    for bad, field in (({"bank": "extract"}, "bank"), ({"eval_steps": 0}, "eval_steps"),
                       ({"surprise": 1}, "surprise")):
        with pytest.raises(ValidationError) as err:
            validate_config({**base, "memory_r1": {**base["memory_r1"], **bad}}, TrainConfig)
        assert f"memory_r1.{field}" in str(err.value)
