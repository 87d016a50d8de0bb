"""``memfactory worker``, ``submit`` and ``runs ...``: background runs from the command line."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the run commands to the ``memfactory`` application."""
