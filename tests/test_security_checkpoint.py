"""A checkpoint file holding more than tensors is refused on resume, with a message that
never suggests turning the safety check off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from memfactory_core.errors import MemFactoryError
from memfactory_core.training.trainer import load_tensors


class RunsCode:
    """Unpickling this calls a function: what a tampered ``optimizer.pt`` would carry."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.getenv, ("HOME",))


def test_a_tampered_optimizer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "optimizer.pt"
    torch.save({"state": {}, "evil": RunsCode()}, path)
    with pytest.raises(MemFactoryError) as caught:
        load_tensors(path)
    message = str(caught.value)
    assert str(path) in message and "objects other than tensors" in message
    assert "weights_only" not in message


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.pt"
    torch.save({"last_epoch": 3}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(MemFactoryError, match=r"scheduler\.pt is refused"):
        load_tensors(path)


def test_plain_state_loads(tmp_path: Path) -> None:
    path = tmp_path / "rng_state.pt"
    torch.save({"torch": torch.get_rng_state()}, path)
    assert torch.equal(load_tensors(path)["torch"], torch.get_rng_state())
