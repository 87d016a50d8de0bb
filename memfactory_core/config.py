"""Loading YAML configs with ``dotted.key=value`` overrides into pydantic models, and what a
config submitted by someone else may ask for.

YAML is read with a size limit and an alias-expansion limit (a "billion laughs" document of
1 KB can otherwise expand to gigabytes). Configs that run as background runs are untrusted:
:func:`submitted_config_problems` lists what they may not do (read an environment variable
the operator did not allow as an API key, run a model folder's own code).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from memfactory_core.errors import MemFactoryError, Problem, ValidationError

T = TypeVar("T", bound=BaseModel)

#: the most bytes a config text (a file or a form) may have
MAX_CONFIG_BYTES = 1_000_000
#: the most YAML nodes a config may expand to, aliases counted once per use
MAX_CONFIG_NODES = 100_000

#: API-key variables a submitted config may name start with this prefix ...
KEY_ENV_PREFIX = "MEMFACTORY_KEY_"
#: ... or are listed (comma-separated) in this variable, set by the operator
ALLOWED_KEY_ENVS_ENV = "MEMFACTORY_ALLOWED_KEY_ENVS"
#: "1" when the operator lets submitted configs use ``trust_remote_code``
ALLOW_REMOTE_CODE_ENV = "MEMFACTORY_ALLOW_REMOTE_CODE"
#: "1" in processes that execute submitted configs (run processes, the workbench)
RESTRICTED_ENV = "MEMFACTORY_RESTRICTED"
#: never usable as API keys, whatever the operator lists
NEVER_KEY_ENVS = frozenset({"MEMFACTORY_DB_URL", "MEMFACTORY_UI_AUTH"})

_RESOLVER = re.compile(r"\$\{\s*[\w.]+\s*:")


# ------------------------------------------------------------------------ YAML
def load_yaml_text(text: str, source: str = "config", *, max_bytes: int = MAX_CONFIG_BYTES,
                   max_nodes: int = MAX_CONFIG_NODES) -> Any:
    """Parse YAML ``text`` safely: at most ``max_bytes`` bytes, at most ``max_nodes`` nodes
    once aliases are expanded, no recursive aliases; errors name ``source``."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > max_bytes:
        raise MemFactoryError(f"{source}: {size} bytes is more than a config may have "
                              f"({max_bytes} bytes)")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, max_nodes, source)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise MemFactoryError(f"{source}: not valid YAML: {err}") from None
    except RecursionError:
        raise MemFactoryError(f"{source}: nested too deeply") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, max_nodes: int, source: str) -> None:
    """Refuse a node graph that expands to more than ``max_nodes`` nodes or loops."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise MemFactoryError(f"{source}: an alias refers to a node that contains it "
                                  "(a recursive structure)")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > max_nodes:
                raise MemFactoryError(
                    f"{source}: expands to more than {max_nodes} values once its aliases "
                    f"(*name) are expanded (line {node.start_mark.line + 1}); refused")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root)


def parse_config_mapping(text: str, source: str = "config") -> dict[str, Any]:
    """A YAML config text as a mapping (empty text: an empty mapping)."""
    raw = load_yaml_text(text, source) or {}
    if not isinstance(raw, dict):
        raise MemFactoryError(f"{source}: a config must be a mapping, got {type(raw).__name__}")
    return raw


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def load_config(path: str | Path, overrides: list[str], model: type[T]) -> T:
    """Read ``path``, apply ``key.sub=value`` overrides (OmegaConf syntax), validate.

    ``${a.b}`` interpolation works; resolvers such as ``${oc.env:NAME}`` are refused (they
    would copy environment variables into a stored config)."""
    path = Path(path)
    if not path.is_file():
        raise MemFactoryError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise MemFactoryError(f"{path}: not a UTF-8 text file ({err.reason} at byte "
                              f"{err.start})") from None
    raw = parse_config_mapping(text, str(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MemFactoryError(f"override {item!r} is not of the form key=value")
        if value.strip() == "":
            raise MemFactoryError(f"override {item!r} has no value (write {key}=null to "
                                  "clear a setting)")
    for s in [*_strings(raw), *overrides]:
        if _RESOLVER.search(s):
            raise MemFactoryError(f"{path}: {s!r}: resolvers like ${{oc.env:...}} are not "
                                  "supported in configs")
    try:
        merged = OmegaConf.merge(OmegaConf.create(raw), OmegaConf.from_dotlist(list(overrides)))
        data: Any = OmegaConf.to_container(merged, resolve=True)
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise MemFactoryError(f"{path}: cannot apply overrides {overrides}: "
                              f"{' '.join(str(err).split())}") from None
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


# ------------------------------------------------------------ submitted configs
def restricted() -> bool:
    """Whether this process executes configs submitted by others."""
    return os.environ.get(RESTRICTED_ENV) == "1"


def remote_code_allowed() -> bool:
    """Whether the operator lets submitted configs set ``trust_remote_code``."""
    return os.environ.get(ALLOW_REMOTE_CODE_ENV) == "1"


def allowed_key_envs() -> list[str]:
    """Variables the operator listed in ``$MEMFACTORY_ALLOWED_KEY_ENVS`` (besides the
    ``MEMFACTORY_KEY_*`` prefix)."""
    raw = os.environ.get(ALLOWED_KEY_ENVS_ENV, "")
    return [n.strip() for n in raw.split(",") if n.strip() and n.strip() not in NEVER_KEY_ENVS]


def key_env_allowed(name: str) -> bool:
    """Whether a submitted config may name environment variable ``name`` as an API key."""
    if name in NEVER_KEY_ENVS:
        return False
    return (name.startswith(KEY_ENV_PREFIX) and len(name) > len(KEY_ENV_PREFIX)) or (
        name in allowed_key_envs())


def key_env_rule() -> str:
    """The rule for API-key variable names, for messages."""
    extra = allowed_key_envs()
    return (f"a submitted config may only name variables starting with {KEY_ENV_PREFIX}"
            + (f" or {', '.join(extra)}" if extra else "")
            + f" (the operator adds others with --allow-key-env or ${ALLOWED_KEY_ENVS_ENV})")


def check_key_env(name: str) -> None:
    """Raise when a process executing submitted configs may not read ``name``."""
    if restricted() and not key_env_allowed(name):
        raise MemFactoryError(f"api_key_env {name!r} is not allowed: {key_env_rule()}")


def submitted_config_problems(config: Any, *, allow_remote_code: bool | None = None
                              ) -> list[Problem]:
    """What a submitted config asks for that it may not: any ``api_key_env`` naming a
    variable the operator did not allow, any ``trust_remote_code`` set (unless allowed).
    The whole mapping is searched, so every place a key name can hide is covered."""
    if allow_remote_code is None:
        allow_remote_code = remote_code_allowed()
    problems: list[Problem] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                loc = f"{where}.{k}" if where else str(k)
                if k == "api_key_env":
                    if not isinstance(v, str) or not key_env_allowed(v):
                        problems.append(Problem(loc, f"{v!r} is not allowed: {key_env_rule()}"))
                elif k == "trust_remote_code" and v not in (False, None) and not (
                        allow_remote_code):
                    problems.append(Problem(loc, (
                        "runs a model folder's own Python code; refused for submitted runs "
                        f"unless the operator starts the worker or workbench with "
                        f"--allow-remote-code (or ${ALLOW_REMOTE_CODE_ENV}=1)")))
                walk(v, loc)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}.{i}" if where else str(i))

    walk(config, "")
    return problems


def check_submitted_config(config: Any, source: str = "config") -> None:
    """Raise a :class:`ValidationError` listing :func:`submitted_config_problems`."""
    problems = submitted_config_problems(config)
    if problems:
        raise ValidationError(f"{source}: not allowed for a submitted run", problems)


# --------------------------------------------------------------- output folders
def check_output_dir(path: str | Path, *, what: str = "output_dir") -> Path:
    """``path`` as a folder that may be created or written: an existing file is refused."""
    p = Path(path).expanduser()
    for parent in (p, *p.parents):
        if parent.exists() and not parent.is_dir():
            raise MemFactoryError(f"{what} {str(p)!r}: {str(parent)!r} is a file, not a folder")
    return p
