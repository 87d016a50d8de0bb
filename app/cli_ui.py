"""``memfactory ui``: the Gradio workbench with an embedded scheduler."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``ui`` command to the ``memfactory`` application."""
