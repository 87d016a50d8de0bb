"""Config options end to end, through the commands a user runs: ``data.exclude`` keeps
another file's questions out of training and evaluation, and ``scale_rewards`` decides how
each trajectory's advantage is scaled (checked against the rewards the run saved)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from app.cli import app
from memfactory_core.config import load_config
from memfactory_core.data.loaders import load_episodes, question_ids
from memfactory_core.paths import ASSETS_DIR, SAMPLE_DATA_DIR
from memfactory_core.training.config import TrainConfig
from memfactory_core.training.trainer import GRPOTrainer

SAMPLE = SAMPLE_DATA_DIR / "hotpotqa_sample.jsonl"
CONFIGS = ASSETS_DIR / "configs"


@pytest.fixture()
def excluded(tmp_path: Path) -> Path:
    """A data file holding the first 20 of the sample's 30 questions."""
    path = tmp_path / "seen.jsonl"
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(lines[:20]) + "\n", encoding="utf-8")
    return path


def test_data_exclude_in_a_training_config(tmp_path: Path, excluded: Path) -> None:
    config = yaml.safe_load((CONFIGS / "train_memagent_tiny.yaml").read_text())
    config["data"].update(path=str(SAMPLE), exclude=str(excluded), limit=None)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path, [f"output_dir={tmp_path / 'run'}"], TrainConfig)
    seen = question_ids(excluded)
    trained = {q.id for e in GRPOTrainer(cfg).episodes for q in e.questions}
    assert len(seen) == 20 and len(trained) == 10
    assert not trained & seen
    assert trained == question_ids(SAMPLE) - seen


def test_data_exclude_through_memfactory_eval(tmp_path: Path, excluded: Path) -> None:
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, [
        "eval", str(CONFIGS / "eval_memagent_tiny.yaml"), f"data.path={SAMPLE}",
        f"data.exclude={excluded}", "data.docs=2", "data.limit=3",
        "pipeline_params.boxed_answerer.max_new_tokens=4", f"output_dir={out}"])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    evaluated = [r["id"] for r in results["records"]]
    # the first three questions of the file that are not in the excluded one
    unseen = [q.id for e in load_episodes(SAMPLE, n_docs=2) for q in e.questions
              if q.id not in question_ids(excluded)]
    assert evaluated == unseen[:3]

    res = CliRunner().invoke(app, [
        "eval", str(CONFIGS / "eval_memagent_tiny.yaml"), f"data.path={SAMPLE}",
        f"data.exclude={tmp_path / 'nowhere.jsonl'}", f"output_dir={out}-missing"])
    assert res.exit_code != 0
    assert "nowhere.jsonl" in (res.output + str(res.exception))


def _expected(rewards: torch.Tensor, group: int, mode: str) -> torch.Tensor:
    grouped = rewards.view(-1, group)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).flatten()
    if mode == "group":
        return centred / (grouped.std(dim=1).repeat_interleave(group) + 1e-4)
    if mode == "batch":
        return centred / (rewards.std() + 1e-4)
    return centred


@pytest.mark.parametrize("mode", ["none", "group", "batch"])
def test_scale_rewards_through_memfactory_train(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "run"
    group = 4
    # a memory-length reward differs between trajectories of one group
    config = yaml.safe_load((CONFIGS / "train_synthetic_tiny.yaml").read_text())
    config["pipeline_params"]["memory_writer"]["max_new_tokens"] = 4
    config.update(rewards=[{"name": "memory_length", "budget": 4}], scale_rewards=mode,
                  num_generations=group, questions_per_step=2, save_samples=8,
                  per_device_train_batch_size=64, max_steps=1, output_dir=str(out))
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    res = CliRunner().invoke(app, ["train", str(path), "--quiet"])
    assert res.exit_code == 0, res.output
    [saved] = (out / "samples").glob("step_*.jsonl")  # the one step's trajectories
    records = sorted((json.loads(x) for x in saved.read_text().splitlines()),
                     key=lambda r: r["trajectory"])
    assert [r["trajectory"] for r in records] == list(range(8))  # every trajectory
    rewards = torch.tensor([r["reward"] for r in records])
    advantages = torch.tensor([r["advantage"] for r in records])
    assert rewards.std() > 0, "equal rewards: the modes cannot be told apart"
    assert torch.allclose(advantages, _expected(rewards, group, mode), atol=1e-4)
    others = [m for m in ("none", "group", "batch") if m != mode]
    # the check tells the modes apart on these rewards
    assert not any(torch.allclose(advantages, _expected(rewards, group, m), atol=1e-4)
                   for m in others)
