"""Reranker training through ``memfactory train`` and the run store: metrics, samples,
checkpoints with the embedding dimension, exact resume, GRPO, citation and mixed rewards, and
Recall@k of retriever vs reranker with paired intervals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from memfactory_core.config import load_config
from memfactory_core.errors import MemFactoryError
from memfactory_core.eval.config import EvalConfig
from memfactory_core.paths import ASSETS_DIR
from memfactory_core.rerank.evaluate import compare_recall
from memfactory_core.rerank.module import checkpoint_info, load_reranker
from memfactory_core.training.config import TrainConfig
from memfactory_core.training.reranker_trainer import RerankerTrainer, subset_rewards
from tests.fakes import ScriptedLLM

REPO = Path(__file__).resolve().parents[1]
TINY = ASSETS_DIR / "configs" / "train_rmm_reranker_tiny.yaml"


def train_cli(out: Path, *overrides: str) -> None:
    result = CliRunner().invoke(app, ["train", str(TINY), f"output_dir={out}", *overrides,
                                      "--quiet"])
    assert result.exit_code == 0, result.output


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_cli_writes_metrics_samples_and_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_cli(out, "max_steps=6", "save_steps=3")
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("reward", "loss", "grad_norm", "evidence_hit_share", "recall@2", "step_time"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert all(-1.0 <= r["reward"] <= 1.0 for r in rows)
    sample = json.loads((out / "samples" / "step_000001.jsonl").read_text().splitlines()[0])
    [subset] = sample["subsets"]
    assert len(subset["selected"]) == len(subset["rewards"]) <= 2
    evidence = set(sample["evidence"])
    for memory, reward in zip(subset["selected"], subset["rewards"], strict=True):
        assert reward == (1.0 if evidence & set(memory["turn_ids"]) else -1.0)
    meta = checkpoint_info(out / "checkpoint-6")
    assert meta["dim"] == "64" and meta["embedder"] == "hashing-64"
    assert (out / "checkpoint-3" / "trainer_state.json").is_file()
    moved = load_reranker(out / "checkpoint-6", dim=64)
    assert moved.w_q.weight.abs().sum() > 0  # the module was trained


def test_resume_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    train_cli(whole, "max_steps=6", "save_steps=100")
    train_cli(split, "max_steps=4", "save_steps=100")
    train_cli(split, "max_steps=6", "save_steps=100", "resume=true")
    assert [r["step"] for r in read_metrics(split)] == [1, 2, 3, 4, 5, 6]
    a = load_reranker(whole / "checkpoint-6")
    b = load_reranker(split / "checkpoint-6")
    assert torch.equal(a.w_q.weight, b.w_q.weight) and torch.equal(a.w_m.weight, b.w_m.weight)
    assert [r["reward"] for r in read_metrics(whole)] == [r["reward"] for r in read_metrics(split)]


def test_grpo_variant_trains_on_sampled_groups(tmp_path: Path) -> None:
    out = tmp_path / "grpo"
    train_cli(out, "max_steps=3", "reranker.algorithm=grpo", "reranker.group_size=3")
    rows = read_metrics(out)
    assert len(rows) == 3 and all(r["grad_norm"] >= 0 for r in rows)
    sample = json.loads((out / "samples" / "step_000002.jsonl").read_text().splitlines()[0])
    assert len(sample["subsets"]) == 3


def tiny_config(tmp_path: Path, *overrides: str) -> TrainConfig:
    return load_config(TINY, [f"output_dir={tmp_path / 'out'}", *overrides], TrainConfig)


def test_citation_reward_uses_the_generators_citations(tmp_path: Path) -> None:
    # cites the first memory shown, and one index that names none
    llm = ScriptedLLM(lambda text: "Oslo [0] [7]")
    cfg = tiny_config(tmp_path, "reranker.reward=citation", "max_steps=2")
    trainer = RerankerTrainer(cfg, loader=lambda mc: llm)
    metrics, samples = trainer.train_step()
    [subset] = samples[0]["subsets"]
    assert subset["citations"] == [0] and subset["out_of_range"] == [7]
    assert subset["rewards"] == [1.0] + [-1.0] * (len(subset["selected"]) - 1)
    shown = sum(len(s["subsets"][0]["selected"]) for s in samples)
    assert metrics["out_of_range_citations"] == 4.0  # one per question of the step
    assert 0 < metrics["cited_useful_share"] < 1 and shown
    assert llm.calls  # the generator ran once per step, batched
    assert len(llm.calls) == 1 and len(llm.calls[0][0]) == cfg.questions_per_step


def test_mixed_reward_weighs_both_sources() -> None:
    cfg = TrainConfig.model_validate({
        "pipeline": "rmm_observations", "model": "tiny-random", "output_dir": "x",
        "data": {"path": "x.json"},
        "reranker": {"reward": "mix", "evidence_weight": 3.0, "citation_weight": 1.0}})
    assert cfg.reranker is not None
    assert subset_rewards([True, False], [False, False], cfg.reranker) == [0.5, -1.0]


def test_citation_reward_without_a_citing_generator_is_refused(tmp_path: Path) -> None:
    spec = {"name": "x", "memory": {"type": "bank", "params": {"embedder": "hashing-64"}},
            "ingest": [{"component": "turn_segmenter"}, {"component": "given_facts"},
                       {"component": "add_all"}],
            "query": [{"component": "retriever", "params": {"mode": "dense"}},
                      {"component": "reranker"}, {"component": "answer_agent"}]}
    cfg = tiny_config(tmp_path, "reranker.reward=citation")
    cfg = cfg.model_copy(update={"pipeline": spec, "pipeline_params": {}})
    with pytest.raises(MemFactoryError, match="needs a citing_generator"):
        RerankerTrainer(cfg, loader=lambda mc: ScriptedLLM())


def recall_config(tmp_path: Path, embedder: str = "hashing-64", **reranker: object
                  ) -> EvalConfig:
    return EvalConfig.model_validate({
        "pipeline": "rmm_observations", "model": "tiny-random", "output_dir": str(tmp_path),
        "data": {"path": str(ASSETS_DIR / "data" / "conversations_sample.json")},
        "pipeline_params": {"memory": {"embedder": embedder}, "reranker": reranker}})


def test_untrained_reranker_recall_equals_the_dense_retrievers(tmp_path: Path) -> None:
    cfg = recall_config(tmp_path)
    result = compare_recall(cfg, ks=[1, 5], loader=lambda mc: ScriptedLLM())
    assert result["n"] > 0
    for k in (1, 5):
        r = result["recall"][f"recall@{k}"]
        assert r["retriever"] == r["reranker"] and r["paired"]["diff"] == 0.0
    assert result["recall"]["recall@5"]["retriever"] > 0


def test_trained_reranker_is_evaluated_and_another_dimension_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_cli(out, "max_steps=20", "learning_rate=0.05")
    cfg = recall_config(tmp_path, checkpoint=str(out / "checkpoint-20"), top_m=5)
    result = compare_recall(cfg, ks=[5], loader=lambda mc: ScriptedLLM())
    paired = result["recall"]["recall@5"]["paired"]
    assert paired["n"] == result["n"] and paired["diff_low"] <= paired["diff"]
    wrong = recall_config(tmp_path, "hashing-32", checkpoint=str(out / "checkpoint-20"))
    with pytest.raises(MemFactoryError, match=r"64-dimensional embeddings.*32 dimensions"):
        compare_recall(wrong, ks=[5], loader=lambda mc: ScriptedLLM())


def test_a_reranker_run_through_the_store_streams_its_metrics(tmp_path: Path,
                                                              monkeypatch) -> None:
    from jobs.store import RunStore
    from jobs.submit import submit_run

    home = tmp_path / "home"
    monkeypatch.setenv("MEMFACTORY_HOME", str(home))
    url = f"sqlite:///{tmp_path}/db.sqlite"
    store = RunStore(url=url)
    run = submit_run(store, "train", TINY, ["max_steps=5", "save_steps=5"], base_dir=REPO)
    claimed = store.claim_next("test-worker")
    assert claimed is not None and claimed.id == run.id
    env = {**os.environ, "MEMFACTORY_DB_URL": url, "MEMFACTORY_HOME": str(home),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "jobs.entry", str(run.id)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = store.get_run(run.id)
    assert done.status == "succeeded", done.error
    series = store.metrics(run.id)[run.id]
    assert series["reward"][0] == [1, 2, 3, 4, 5]
    assert "evidence_hit_share" in series and "recall@2" in series
    assert (Path(done.output_dir) / "checkpoint-5" / "reranker.safetensors").is_file()


def test_memories_and_questions_are_embedded_once(tmp_path: Path) -> None:
    from memfactory_core.memory import MemoryBank
    from memfactory_core.rerank.candidates import share_embeddings
    from memfactory_core.retrieval.embedders import cached_embedder, load_embedder

    class Counting:
        def __init__(self) -> None:
            self.inner = load_embedder("hashing-32")
            self.model_name, self.dim, self.texts = "counting", 32, 0

        def embed(self, texts):  # type: ignore[no-untyped-def]
            self.texts += len(texts)
            return self.inner.embed(texts)

    inner = Counting()
    bank = MemoryBank(inner)  # type: ignore[arg-type]
    for text in ["Ann lives in Oslo", "Bo has a cat", "Ann likes tea"]:
        bank.add(text)
    questions = ["Where does Ann live?", "What pet does Bo have?"]
    cached = share_embeddings({"c": bank}, questions)
    assert cached is not None and inner.texts == 2
    hits = [bank.search(q, 3, "dense") for q in questions]
    assert inner.texts == 5  # the index embedded its three texts, the questions were cached
    embed = cached_embedder(cached)
    embed.embed([e.text for h in hits for e, _ in h] + questions)
    assert inner.texts == 5


def test_listwise_loss_raises_the_evidence_candidates_and_skips_questions_without() -> None:
    from memfactory_core.training.reranker_trainer import listwise_loss

    scores = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.2, 0.1]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    hits = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # question 2 has no evidence
    loss = listwise_loss(scores, mask, hits, temperature=0.5)
    p = torch.softmax(scores[0].detach() / 0.5, dim=0)
    assert torch.isclose(loss, -torch.log(p[0] + p[2]))
    loss.backward()
    assert scores.grad is not None
    assert scores.grad[0, 0] < 0 and scores.grad[0, 2] < 0 and scores.grad[0, 1] > 0
    assert torch.all(scores.grad[1] == 0)
    nothing = listwise_loss(scores, mask, torch.zeros(2, 3), 0.5)
    assert nothing.item() == 0.0


def test_listwise_training_and_its_config_checks(tmp_path: Path) -> None:
    out = tmp_path / "lw"
    train_cli(out, "max_steps=4", "reranker.algorithm=listwise", "learning_rate=0.05")
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert load_reranker(out / "checkpoint-4").w_m.weight.abs().sum() > 0
    with pytest.raises(MemFactoryError, match="listwise learns from evidence"):
        tiny_config(tmp_path, "reranker.algorithm=listwise", "reranker.reward=citation")
    with pytest.raises(MemFactoryError, match="early_stopping_patience needs"):
        tiny_config(tmp_path, "reranker.early_stopping_patience=2")


VALIDATED = ("data.conversations=[sample-1,sample-2]",
             "reranker.validation_conversations=[sample-3]", "reranker.eval_steps=2")


def test_validation_keeps_the_best_reranker_and_starts_from_the_retrievers_recall(
        tmp_path: Path) -> None:
    out = tmp_path / "val"
    train_cli(out, "max_steps=6", "learning_rate=0.05", *VALIDATED)
    rows = read_metrics(out)
    measured = [r for r in rows if "val_recall@2" in r]
    assert [r["step"] for r in measured] == [2, 4, 6]
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["validation_conversations"] == ["sample-3"]
    assert best["val_recall@2"] == max([best["val_recall@2"]] + [r["val_recall@2"]
                                                                 for r in measured])
    assert measured[-1]["val_best_recall@2"] == best["val_recall@2"]
    # the measure before training is the dense retriever's Recall@2 on sample-3
    cfg = recall_config(tmp_path / "r", top_m=2)
    cfg.data.conversations = ["sample-3"]
    cfg.pipeline_params["retriever"] = {"top_k": 8}
    retriever = compare_recall(cfg, ks=[2], loader=lambda mc: ScriptedLLM())
    untrained = retriever["recall"]["recall@2"]["retriever"]
    if best["step"] == 0:
        assert best["val_recall@2"] == pytest.approx(untrained)
    else:
        assert best["val_recall@2"] > untrained
    assert checkpoint_info(out / "best")["dim"] == "64"


def test_early_stopping_stops_after_measurements_without_gain(tmp_path: Path,
                                                              monkeypatch) -> None:
    from memfactory_core.training.callbacks import JsonlCallback

    measures = iter([0.5, 0.6, 0.55, 0.6, 0.9, 0.9])
    monkeypatch.setattr(RerankerTrainer, "validation_recall", lambda self: next(measures))
    cfg = tiny_config(tmp_path, "max_steps=20", "reranker.early_stopping_patience=2",
                      *VALIDATED)
    trainer = RerankerTrainer(cfg, callbacks=[JsonlCallback()])
    summary = trainer.train()
    # measured at steps 0 (0.5), 2 (0.6, best), 4 (0.55), 6 (0.6, not better): stop
    assert summary["steps"] == 6 and summary["stopped_early"] is True
    assert summary["best_step"] == 2 and summary["val_best_recall@2"] == 0.6
    assert summary["val_initial_recall@2"] == 0.5
    best = load_reranker(tmp_path / "out" / "best")
    at_2 = read_metrics(tmp_path / "out")[1]
    assert at_2["step"] == 2 and at_2["val_best_step"] == 2.0
    assert not torch.equal(best.w_q.weight, trainer.module.w_q.weight)


def test_validation_conversations_must_be_held_out(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "data.conversations=[sample-1,sample-2]",
                      "reranker.validation_conversations=[sample-2]")
    with pytest.raises(MemFactoryError, match=r"\['sample-2'\] are also training"):
        RerankerTrainer(cfg)
    cfg = tiny_config(tmp_path, "data.conversations=[sample-1]",
                      "reranker.validation_conversations=[sample-9]")
    with pytest.raises(MemFactoryError, match=r"no conversation\(s\) sample-9"):
        RerankerTrainer(cfg)


def test_resume_keeps_the_best_validation_measure(tmp_path: Path) -> None:
    out = tmp_path / "res"
    train_cli(out, "max_steps=4", "save_steps=100", "learning_rate=0.05", *VALIDATED)
    before = json.loads((out / "best" / "best.json").read_text())
    train_cli(out, "max_steps=6", "save_steps=100", "learning_rate=0.05", "resume=true",
              *VALIDATED)
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    after = json.loads((out / "best" / "best.json").read_text())
    assert state["best_recall"] == after["val_recall@2"] >= before["val_recall@2"]
    assert [r["step"] for r in read_metrics(out) if "val_recall@2" in r] == [2, 4, 6]


def test_recall_command_compares_retriever_and_reranker(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    train_cli(out, "max_steps=3", "learning_rate=0.05")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(json.dumps({
        "pipeline": "rmm_observations", "model": "tiny-random", "output_dir": "unused",
        "data": {"path": str(ASSETS_DIR / "data" / "conversations_sample.json")},
        "pipeline_params": {"memory": {"embedder": "hashing-64"}, "retriever": {"top_k": 8},
                            "reranker": {"top_m": 2}}}))
    result = CliRunner().invoke(app, [
        "recall", str(cfg), f"output_dir={tmp_path / 'r'}",
        f"pipeline_params.reranker.checkpoint={out / 'checkpoint-3'}", "--k", "1",
        "--k", "2"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r" / "recall.json").read_text())
    assert set(saved["recall"]) == {"recall@1", "recall@2"}
    for name, r in saved["recall"].items():
        assert f"{name}: retriever {r['retriever']:.4f}  reranker {r['reranker']:.4f}" \
            in result.output
    assert "95% paired bootstrap" in result.output


def test_lexical_training_learns_the_overlap_weight_and_the_slot_uses_it(tmp_path: Path
                                                                       ) -> None:
    out = tmp_path / "lex"
    train_cli(out, "max_steps=5", "reranker.lexical=true")
    rows = read_metrics(out)
    assert all("lexical_weight" in r for r in rows) and rows[-1]["lexical_weight"] != 0.0
    assert checkpoint_info(out / "checkpoint-5")["features"] == "lexical"
    cfg = recall_config(tmp_path / "r", checkpoint=str(out / "checkpoint-5"), top_m=2)
    result = compare_recall(cfg, ks=[2], loader=lambda mc: ScriptedLLM())
    assert result["n"] > 0
    with pytest.raises(MemFactoryError, match="trained with lexical=True"):
        RerankerTrainer(tiny_config(tmp_path, f"reranker.init_checkpoint={out / 'checkpoint-5'}"))
