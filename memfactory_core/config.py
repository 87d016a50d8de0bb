"""Loading YAML configs with ``dotted.key=value`` overrides into pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from memfactory_core.errors import MemFactoryError, Problem, ValidationError

T = TypeVar("T", bound=BaseModel)


def load_config(path: str | Path, overrides: list[str], model: type[T]) -> T:
    """Read ``path``, apply ``key.sub=value`` overrides (OmegaConf syntax), validate."""
    path = Path(path)
    if not path.is_file():
        raise MemFactoryError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise MemFactoryError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise MemFactoryError(f"{path}: a config must be a mapping, got {type(raw).__name__}")
    for item in overrides:
        if "=" not in item:
            raise MemFactoryError(f"override {item!r} is not of the form key=value")
    try:
        merged = OmegaConf.merge(OmegaConf.create(raw), OmegaConf.from_dotlist(list(overrides)))
        data: Any = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        raise MemFactoryError(f"{path}: cannot apply overrides {overrides}: {err}") from None
    return validate_config(data, model, source=str(path))


def validate_config(data: dict[str, Any], model: type[T], source: str = "config") -> T:
    """Validate a config mapping, listing every problem with its dotted location."""
    try:
        return model.model_validate(data)
    except PydanticValidationError as err:
        problems = [
            Problem(".".join(str(x) for x in e["loc"]), e["msg"]) for e in err.errors()
        ]
        raise ValidationError(f"{source}: invalid {model.__name__}", problems) from None
