"""The GRPO trainer on tiny-random: LoRA-only gradients, steps, stop/resume, export, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from typer.testing import CliRunner

from memfactory_core.config import validate_config
from memfactory_core.training.callbacks import JsonlCallback, StopCallback
from memfactory_core.training.config import TrainConfig
from memfactory_core.training.trainer import GRPOTrainer, latest_checkpoint


def _config(out: Path, **over: Any) -> TrainConfig:
    data: dict[str, Any] = {
        "pipeline": "memagent",
        "pipeline_params": {
            "memory": {"max_tokens": 8},
            "token_chunker": {"chunk_tokens": 32, "max_chunks": 2},
            "memory_writer": {"template": "Q: {question}\nNotes: {memory}\nText: {chunk}",
                              "max_new_tokens": 4},
            "boxed_answerer": {"template": "Notes: {memory}\nQ: {question}",
                               "max_new_tokens": 3, "answer_prefix": "\\boxed{"},
        },
        "model": "tiny-random",
        "data": {"synthetic": {"episodes": 8, "facts": 2, "filler_sentences": 1}},
        "rewards": [{"name": "format", "weight": 0.5}, {"name": "boxed_em"}],
        "learning_rate": 0.02, "num_generations": 2, "questions_per_step": 2,
        "per_device_train_batch_size": 4, "beta": 0.04, "max_steps": 2, "save_steps": 100,
        "output_dir": str(out),
    }
    data.update(over)
    return validate_config(data, TrainConfig)


def _adapter(trainer: GRPOTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()
            if p.requires_grad}


def test_only_lora_weights_get_gradients_and_trajectory_advantage(tmp_path: Path) -> None:
    trainer = GRPOTrainer(_config(tmp_path / "run"))
    results, groups = trainer.rollout(trainer.episodes_for_step(0))
    assert len(results) == 4 and groups == [0, 0, 1, 1]
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    samples = trainer.turn_samples(results, adv)
    # every memory write and the answer of every trajectory, with its trajectory's advantage
    assert len(samples) == sum(len(r.turns) for r in results)
    assert all(len(r.turns) >= 2 for r in results)
    assert all(s.advantage == adv[s.trajectory].item() for s in samples)
    trainer.optimizer.zero_grad()
    m = trainer._batch_tensors(samples)
    trainer.per_token_logps(m).sum().backward()
    with_grad = [n for n, p in trainer.model.named_parameters() if p.grad is not None]
    assert with_grad and all("lora_" in n for n in with_grad)
    frozen = [n for n, p in trainer.model.named_parameters() if not p.requires_grad]
    assert frozen and not any("lora_" in n for n in frozen)


def test_two_steps_then_stop_resume_matches_uninterrupted(tmp_path: Path) -> None:
    full = GRPOTrainer(_config(tmp_path / "full", max_steps=3), [JsonlCallback()])
    full_summary = full.train()
    assert full_summary["steps"] == 3 and not full_summary["stopped"]
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward", "rewards/format", "rewards/boxed_em", "kl", "loss", "grad_norm",
                "learning_rate", "completion_length", "clip_ratio/region_mean",
                "tokens_per_second", "step_time", "frac_reward_zero_std"):
        assert key in rows[-1], key
    assert list((tmp_path / "full" / "samples").glob("step_*.jsonl"))

    out = tmp_path / "resumed"
    first = GRPOTrainer(_config(out, max_steps=3), [JsonlCallback(), StopCallback(stop_after=1)])
    summary = first.train()
    assert summary["stopped"] and summary["steps"] == 1
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "checkpoint-1"
    assert (ckpt / "adapter_model.safetensors").is_file()
    saved_opt = torch.load(ckpt / "optimizer.pt", weights_only=True)

    second = GRPOTrainer(_config(out, max_steps=3, resume=True), [JsonlCallback()])
    second.load_checkpoint(ckpt)
    assert second.step == 1
    for a, b in zip(second.optimizer.state_dict()["state"].values(),
                    saved_opt["state"].values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["step"], b["step"])
    summary = second.train()
    assert summary["start_step"] == 1 and summary["steps"] == 3
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for name, value in _adapter(second).items():
        assert torch.allclose(value, _adapter(full)[name], atol=1e-6), name


def test_export_merges_into_a_loadable_model(tmp_path: Path) -> None:
    from memfactory_core.llm.base import SamplingParams
    from memfactory_core.llm.models import load_backend
    from memfactory_core.training.export import export_merged

    trainer = GRPOTrainer(_config(tmp_path / "run", max_steps=1))
    trainer.train()
    merged = export_merged(tmp_path / "run")
    assert (merged / "model.safetensors").is_file()
    backend = load_backend(str(merged))
    prompt = [{"role": "user", "content": "Q: what colour is the river?"}]
    ours = backend.generate([prompt], SamplingParams(max_new_tokens=5))
    with torch.no_grad():
        trainer.model.eval()
        live = trainer.policy.generate([prompt], SamplingParams(max_new_tokens=5))
    assert ours[0].completion_ids == live[0].completion_ids


def test_cli_train_and_export(tmp_path: Path) -> None:
    from app.cli import app

    out = tmp_path / "cli"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "assets/configs/train_memagent_tiny.yaml", "--quiet",
                              "max_steps=3", "save_steps=1", "save_total_limit=2",
                              f"output_dir={out}"])
    assert res.exit_code == 0, res.output
    assert (out / "checkpoint-3" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    res = runner.invoke(app, ["export", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "merged" / "config.json").is_file()


def test_all_zero_advantages_skip_backward_but_update_like_a_full_pass(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "run", beta=0.0, learning_rate=0.05)
    skipping = GRPOTrainer(cfg)
    full = GRPOTrainer(cfg)
    with torch.no_grad():
        for a, b in zip(skipping.model.parameters(), full.model.parameters(), strict=True):
            b.copy_(a)
    results, _ = skipping.rollout(skipping.episodes_for_step(0))
    # one non-zero step first so Adam has momentum, then an all-zero step
    for trainer in (skipping, full):
        trainer.optimize(trainer.turn_samples(results, torch.tensor([1.0, -1.0, 0.5, -0.5])))
    zero = torch.zeros(4)
    out = skipping.optimize(skipping.turn_samples(results, zero))
    assert out["micro_batches"] == 0.0 and out["loss"] == 0.0
    # the full path on the same zero advantages, forced through forward and backward
    full.config = full.config.model_copy(update={"beta": 1e-30})
    full.optimize(full.turn_samples(results, zero))
    for (name, a), b in zip(_adapter(skipping).items(), _adapter(full).values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert skipping.scheduler.get_last_lr() == full.scheduler.get_last_lr()


def test_report_to_tensorboard_and_wandb_offline(tmp_path: Path,
                                                 monkeypatch: Any) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "tracked"
    from memfactory_core.training.callbacks import ReportToCallback

    cfg = _config(out, max_steps=2, report_to=["tensorboard", "wandb"])
    GRPOTrainer(cfg, [ReportToCallback(cfg.report_to)]).train()
    [events] = list((out / "runs").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/reward")] == [1, 2]
    assert "train/kl" in acc.Tags()["scalars"]
    # wandb's offline run log is protobuf: the logged keys are stored as plain strings
    [log] = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert b"train/reward" in log.read_bytes() and b"train/kl" in log.read_bytes()
