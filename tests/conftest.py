"""Shared pytest set-up: an isolated workspace and no network for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point MEMFACTORY_HOME at a fresh temp folder and keep Hugging Face and Gradio offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMFACTORY_HOME", str(tmp_path_factory.mktemp("memfactory_home")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        yield
