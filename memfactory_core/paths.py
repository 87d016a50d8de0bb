"""Where MemFactory keeps its workspace and where the shipped assets live."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
PIPELINES_DIR = ASSETS_DIR / "pipelines"
CONFIGS_DIR = ASSETS_DIR / "configs"
SAMPLE_DATA_DIR = ASSETS_DIR / "data"


def memfactory_home() -> Path:
    """The workspace root: ``$MEMFACTORY_HOME``, default ``~/.memfactory``."""
    home = Path(os.environ.get("MEMFACTORY_HOME", Path.home() / ".memfactory")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def model_cache_dir() -> Path:
    """Folder holding models MemFactory builds or converts (tiny-random, smollm2)."""
    path = memfactory_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
