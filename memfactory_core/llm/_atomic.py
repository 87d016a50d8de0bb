"""Build a folder atomically: write into a temporary sibling, then rename it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from memfactory_core.errors import MemFactoryError

COMPLETE_MARKER = "config.json"


def is_complete(path: Path) -> bool:
    """A model folder counts as built once its ``config.json`` is there (renames are atomic)."""
    return (path / COMPLETE_MARKER).is_file()


def atomic_build(path: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` and move ``tmp`` to ``path``; keep ``path`` if it is already built.

    Concurrent builders race harmlessly: the first rename wins and the others drop their copy.
    An interrupted build leaves only a hidden ``.<name>.building-*`` folder, never ``path``.
    """
    if is_complete(path):
        return path
    if path.exists() and any(path.iterdir()):
        raise MemFactoryError(
            f"{path} exists but is not a complete model folder (no {COMPLETE_MARKER}); "
            "remove it to rebuild"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        if not is_complete(tmp):
            raise MemFactoryError(f"building {path.name} wrote no {COMPLETE_MARKER}")
        try:
            os.replace(tmp, path)  # replaces an empty folder, fails on a non-empty one
        except OSError:
            if not is_complete(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
