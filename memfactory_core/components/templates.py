"""Prompt templates with named fields, filled by plain substitution (never evaluated).

A placeholder is a lowercase name in braces, `{question}`; other braces (\\boxed{Paris}) are text.
"""

from __future__ import annotations

import re

_FIELD = re.compile(r"\{([a-z_]+)\}")


def template_fields(template: str) -> set[str]:
    """Names of the ``{field}`` placeholders a template uses."""
    return set(_FIELD.findall(template))


def check_template(template: str, required: set[str], allowed: set[str]) -> str:
    """Validate a template's fields; used by parameter models' validators."""
    fields = template_fields(template)
    missing = required - fields
    unknown = fields - allowed
    if missing:
        raise ValueError(f"template lacks placeholder(s) {sorted(missing)}")
    if unknown:
        raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return template


def fill(template: str, **values: str) -> str:
    """Replace each ``{field}`` by its value; other braces stay as they are."""
    return _FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), template)
