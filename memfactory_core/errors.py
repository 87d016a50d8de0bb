"""Errors with a location: every message says what is wrong and where."""

from __future__ import annotations

from dataclasses import dataclass


class MemFactoryError(Exception):
    """Base class for errors MemFactory reports to its users."""


@dataclass(frozen=True)
class Problem:
    """One problem found while validating something, with its location."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class ValidationError(MemFactoryError):
    """Several problems found at once (a pipeline, a config); lists all of them."""

    def __init__(self, what: str, problems: list[Problem]) -> None:
        self.what = what
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{what}: {len(problems)} problem(s)\n{lines}")


class DataError(MemFactoryError):
    """A data file is malformed; names the file, the line (1-based) and the field."""

    def __init__(
        self, path: str, message: str, *, line: int | None = None, field: str | None = None
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        where = path + (f":{line}" if line is not None else "")
        if field:
            where += f" (field {field!r})"
        super().__init__(f"{where}: {message}")


class UnknownModelError(MemFactoryError):
    """A model name that is neither built in, a local folder, nor loadable from a hub cache."""

    def __init__(self, name: str, available: list[str], detail: str = "") -> None:
        self.name = name
        self.available = available
        msg = (
            f"unknown model {name!r}. Built-in models: {', '.join(available)}; "
            "or give a local model folder or a hub id (needs network or a hub cache)."
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)
