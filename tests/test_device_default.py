"""With no device given, models go to the GPU when one is available (training, evaluation and
chat alike), as TRL and accelerate do; on a machine without one they stay on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from memfactory_core.llm import transformers_backend
from memfactory_core.llm.transformers_backend import resolve_device


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.fixture
def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_default_is_cuda_when_available(fake_cuda: None) -> None:
    assert resolve_device(None) == torch.device("cuda")
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_default_is_mps_then_cpu(monkeypatch: pytest.MonkeyPatch, no_accelerator: None) -> None:
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("mps")


class _Placed(Exception):
    """Raised by the fake ``to`` once it has recorded where the model was sent."""


def test_evaluation_and_chat_models_load_onto_the_gpu(
    fake_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluation and chat load their models through ``load_backend`` with no device."""
    from transformers import PreTrainedModel

    from memfactory_core.llm.models import load_backend, prepare_model

    prepare_model("tiny-random")
    seen: list[Any] = []

    def to(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((args, kwargs))
        raise _Placed

    monkeypatch.setattr(PreTrainedModel, "to", to)
    with pytest.raises(_Placed):
        load_backend("tiny-random")
    assert seen and seen[0][0][0] == torch.device("cuda")


def test_training_without_device_asks_accelerate_for_the_gpu(
    fake_cuda: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import accelerate

    from memfactory_core.training.trainer import GRPOTrainer
    from tests.test_training_trainer import _config

    cfg = _config(tmp_path / "run")
    assert cfg.device is None
    asked: list[dict[str, Any]] = []

    def accelerator(**kwargs: Any) -> Any:
        asked.append(kwargs)
        raise _Placed

    monkeypatch.setattr(accelerate, "Accelerator", accelerator)
    with pytest.raises(_Placed):
        GRPOTrainer(cfg)
    assert asked == [{"cpu": False}]
    asked.clear()
    with pytest.raises(_Placed):
        GRPOTrainer(_config(tmp_path / "cpu", device="cpu"))
    assert asked == [{"cpu": True}]


def test_no_gpu_trains_on_the_cpu(no_accelerator: None, tmp_path: Path) -> None:
    from memfactory_core.training.trainer import GRPOTrainer
    from tests.test_training_trainer import _config

    trainer = GRPOTrainer(_config(tmp_path / "run"))
    assert trainer.accelerator.device.type == "cpu"
    assert next(trainer.model.parameters()).device.type == "cpu"
    assert transformers_backend.resolve_device(trainer.config.device).type == "cpu"
