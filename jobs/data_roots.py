"""Which files a submitted run may read or write: only those under the data folders the
operator allows.

A config submitted through the workbench or ``memfactory submit`` is untrusted, and every
path in it (``data.path``, ``data.exclude``, a pipeline file, a local model folder, a
reranker checkpoint, ``memory_r1.validation.path``, a cache folder, ...) is confined to the
**data roots**:

- the workspace (``$MEMFACTORY_HOME``), except the files directly in it (the run database,
  and the login file when it is kept there): runs, models, saved pipelines and uploads all
  live in its sub-folders;
- the project's ``assets/`` (presets, configs, samples);
- the folder the workbench or worker was started in, unless that is ``/`` or the home
  folder (or above it);
- every folder the operator adds with ``--data-root DIR`` or ``$MEMFACTORY_DATA_ROOTS``
  (separated by ``os.pathsep``).

Paths are resolved (``~``, ``..``, symlinks) before they are compared, hidden entries below
a root (``.git``, ``.env``, ``.ssh``) are refused, and so are the run database (with its
``-wal`` / ``-shm`` files), the login file and anything listed in
``$MEMFACTORY_DENIED_PATHS``. Paths outside the roots are refused whether or not they exist,
so a refusal says nothing about the server's files.

The local ``memfactory train`` / ``eval`` / ``run`` user is trusted and keeps full access:
only :mod:`jobs.submit` and the run process (:mod:`jobs.entry`) apply these rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memfactory_core.errors import DataError, MemFactoryError, Problem, ValidationError
from memfactory_core.paths import ASSETS_DIR, memfactory_home

#: extra data roots the operator allows, separated by ``os.pathsep``
DATA_ROOTS_ENV = "MEMFACTORY_DATA_ROOTS"
#: files submitted runs may never read (the login file), separated by ``os.pathsep``
DENIED_PATHS_ENV = "MEMFACTORY_DENIED_PATHS"
#: the workbench login file (see :mod:`app.auth`); never readable by a run
AUTH_FILE_ENV = "MEMFACTORY_UI_AUTH_FILE"

#: config keys whose string values are file or folder paths, wherever they appear
PATH_KEYS = frozenset({"path", "exclude", "checkpoint", "init_checkpoint", "adapter",
                       "init_adapter", "cache_dir", "output_dir"})
#: ... and keys ending like these
PATH_SUFFIXES = ("_path", "_dir", "_file", "_files", "_checkpoint", "_adapter")
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _resolve(value: str | Path, base: Path) -> Path:
    p = Path(os.path.expanduser(str(value)))
    if not p.is_absolute():
        p = base / p
    return p.resolve()


def _split(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(os.pathsep) if part.strip()]


def start_dir_root(cwd: Path | None = None) -> Path | None:
    """The folder this process was started in as a data root, or None when it is ``/``,
    the home folder or a folder above it (which would open every file of the user)."""
    here = (cwd or Path.cwd()).resolve()
    home = Path.home().resolve()
    if here == Path(here.anchor) or here == home or home.is_relative_to(here):
        return None
    return here


@dataclass(frozen=True)
class DataRoots:
    """The folders submitted runs may use, and the files they never may."""

    roots: tuple[Path, ...]
    denied: tuple[Path, ...]
    workspace: Path

    @classmethod
    def current(cls, *, db_path: str | Path | None = None, cwd: Path | None = None,
                env: Mapping[str, str] | None = None) -> DataRoots:
        """The roots of this process: the workspace, ``assets/``, the start folder and
        ``$MEMFACTORY_DATA_ROOTS``; denied: the SQLite database ``db_path`` (and the
        workspace's default one), the login file, ``$MEMFACTORY_DENIED_PATHS``."""
        env = os.environ if env is None else env
        here = (cwd or Path.cwd()).resolve()
        workspace = memfactory_home().resolve()
        roots: list[Path] = [workspace, ASSETS_DIR.resolve()]
        start = start_dir_root(here)
        if start is not None:
            roots.append(start)
        roots += [_resolve(r, here) for r in _split(env.get(DATA_ROOTS_ENV))]
        denied: list[Path] = []
        for db in (workspace / "memfactory.db", db_path):
            if db:
                main = _resolve(db, here)
                denied += [main, *(main.with_name(main.name + s) for s in _SQLITE_SIDE_FILES)]
        denied += [_resolve(p, here) for p in [*_split(env.get(DENIED_PATHS_ENV)),
                                               *_split(env.get(AUTH_FILE_ENV))]]
        return cls(tuple(dict.fromkeys(roots)), tuple(dict.fromkeys(denied)), workspace)

    def describe(self) -> str:
        """The roots, for messages."""
        return ", ".join(str(r) for r in self.roots)

    def refusal(self, value: str, base: Path | None = None) -> str | None:
        """Why a submitted run may not use path ``value`` (relative to ``base``, default
        the current folder), or None when it may."""
        if "\x00" in value:
            return "a path may not hold a NUL character"
        resolved = _resolve(value, (base or Path.cwd()).resolve())
        shown = repr(value) if str(resolved) == value else f"{value!r} ({resolved})"
        for denied in self.denied:
            if resolved == denied or resolved.is_relative_to(denied):
                return f"{shown} is a file of the server that runs may not read"
        for root in self.roots:
            if not resolved.is_relative_to(root):
                continue
            inner = resolved.relative_to(root).parts
            if any(part.startswith(".") for part in inner):
                return f"{shown} is hidden (a name below {root} starts with '.')"
            if root == self.workspace and len(inner) <= 1:
                return (f"{shown} is the workspace folder or an entry directly in it (its "
                        "database, a login file); runs use its sub-folders (data/, runs/, "
                        "models/, ...)")
            return None
        return (f"{shown} is outside the data folders this server allows ({self.describe()}"
                f"); the operator adds folders with --data-root DIR or ${DATA_ROOTS_ENV}")


def record_policy(data_roots: list[str] | None, denied: list[str | Path] | None = None
                  ) -> list[Path]:
    """Record in this process's environment the data roots the operator added
    (``--data-root``, each an existing folder) and files no run may read (the login file);
    run processes inherit both (see :mod:`jobs.run_env`). Returns the added roots."""
    here = Path.cwd()
    added: list[Path] = []
    for item in data_roots or []:
        for raw in _split(item):
            root = _resolve(raw, here)
            if not root.is_dir():
                raise MemFactoryError(f"--data-root {raw}: not an existing folder")
            added.append(root)
    if added:
        current = _split(os.environ.get(DATA_ROOTS_ENV))
        os.environ[DATA_ROOTS_ENV] = os.pathsep.join(
            dict.fromkeys([*current, *(str(r) for r in added)]))
    files = [str(_resolve(str(p), here)) for p in denied or [] if p]
    if os.environ.get(AUTH_FILE_ENV):
        files.append(str(_resolve(os.environ[AUTH_FILE_ENV], here)))
    if files:
        current = _split(os.environ.get(DENIED_PATHS_ENV))
        os.environ[DENIED_PATHS_ENV] = os.pathsep.join(dict.fromkeys([*current, *files]))
    return added


def sqlite_file(url: Any) -> str | None:
    """The database file of a SQLite SQLAlchemy URL (None for other databases)."""
    if getattr(url, "get_backend_name", lambda: "")() != "sqlite":
        return None
    database = getattr(url, "database", None)
    return database if database and database != ":memory:" else None


# ------------------------------------------------------------------ config paths
def is_path_key(key: str) -> bool:
    """Whether a config key names a file or folder (:data:`PATH_KEYS`, ``*_path``, ...)."""
    return key in PATH_KEYS or key.endswith(PATH_SUFFIXES)


def _path_values(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str) and value.strip():
        yield where, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _path_values(item, f"{where}.{i}")


def looks_like_path(value: str, base: Path) -> bool:
    """A model or pipeline value that names a file or folder rather than a name: absolute,
    ``~``/``.``-relative, a YAML/JSON file name, or something that exists there."""
    if value.startswith(("/", "~", ".")) or value.endswith((".yaml", ".yml", ".json")):
        return True
    try:
        return (base / os.path.expanduser(value)).exists()
    except (OSError, ValueError):
        return True


def config_paths(config: Any, base: Path, *, include_output: bool = True
                 ) -> Iterator[tuple[str, str]]:
    """Every ``(location, path)`` a run config names: keys of :data:`PATH_KEYS` (and
    ``*_path``, ``*_dir``, ... ) anywhere, a pipeline given as a file, local model and
    tokenizer folders (not built-in names, hub ids or remote models of the openai
    backend)."""
    from memfactory_core.llm.models import builtin_model_names

    builtins = set(builtin_model_names())

    def walk(value: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(value, dict):
            remote = value.get("backend") == "openai"
            for key, item in value.items():
                loc = f"{where}.{key}" if where else str(key)
                if not isinstance(key, str):
                    continue
                if key == "output_dir" and not include_output and not where:
                    continue
                if is_path_key(key):
                    yield from _path_values(item, loc)
                elif key in ("model", "pipeline", "tokenizer") and isinstance(item, str):
                    if not (key == "model" and (remote or item in builtins)) and (
                            looks_like_path(item, base)):
                        yield loc, item
                else:
                    yield from walk(item, loc)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from walk(item, f"{where}.{i}" if where else str(i))

    yield from walk(config, "")


def path_problems(config: Any, roots: DataRoots, base: Path | None = None, *,
                  include_output: bool = True) -> list[Problem]:
    """Each path of ``config`` (relative ones taken from ``base``) that a submitted run may
    not use, with its field; a pipeline file that may be used is read for the paths its
    slots name (a reranker checkpoint, ...)."""
    here = (base or Path.cwd()).resolve()
    problems: list[Problem] = []
    for where, value in config_paths(config, here, include_output=include_output):
        reason = roots.refusal(value, here)
        if reason is not None:
            problems.append(Problem(where, reason))
    pipeline = config.get("pipeline") if isinstance(config, dict) else None
    if isinstance(pipeline, str) and not problems:
        for where, value in _pipeline_file_paths(pipeline, here):
            reason = roots.refusal(value, here)
            if reason is not None:
                problems.append(Problem(where, reason))
    return problems


def _pipeline_file_paths(pipeline: str, base: Path) -> list[tuple[str, str]]:
    """The paths a pipeline file or preset names in its slots (none when it cannot be read:
    the pipeline checks report that)."""
    from memfactory_core.pipeline.spec import load_spec

    source = str(_resolve(pipeline, base)) if looks_like_path(pipeline, base) else pipeline
    try:
        spec = load_spec(source)
    except (MemFactoryError, OSError, UnicodeDecodeError, ValueError):
        return []
    data = spec if isinstance(spec, dict) else spec.model_dump(mode="json")
    return [(f"pipeline ({pipeline}): {where}", value)
            for where, value in config_paths(data, base)]


def check_paths(config: Any, roots: DataRoots, source: str, base: Path | None = None, *,
                include_output: bool = True) -> None:
    """Raise a :class:`ValidationError` listing :func:`path_problems`."""
    problems = path_problems(config, roots, base, include_output=include_output)
    if problems:
        raise ValidationError(f"{source}: not allowed for a submitted run", problems)


# ----------------------------------------------------------- safe error messages
_LISTED = re.compile(r"\s*\((?:keys|record has):[^)]*\)")
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_YAML_MARK = re.compile(r'^\s*in "[^"]*", line \d+, column \d+:?\s*$')
MAX_SAFE_MESSAGE = 400


def safe_error_message(err: BaseException) -> str:
    """``err``'s message without what it echoes of a file a submitted run read: a data
    file's field names and ids (quoted values other than the field in error), the lines
    a YAML parser quotes; at most :data:`MAX_SAFE_MESSAGE` characters per line."""
    if isinstance(err, DataError):
        where = err.path + (f":{err.line}" if err.line is not None else "")
        field = err.field or ""
        full = where + (f" (field {field!r})" if field else "")
        text = str(err)
        message = text[len(full) + 2:] if text.startswith(full + ": ") else text
        if field:
            where += f" (field {field[:80]!r})"
        message = _LISTED.sub(" (its keys are not shown)", message)

        def keep(match: re.Match[str]) -> str:
            inner = match.group(0)[1:-1]
            return match.group(0) if inner and inner in field else "'…'"

        message = _QUOTED.sub(keep, message)
        return f"{where}: {message[:MAX_SAFE_MESSAGE]}"
    lines: list[str] = []
    skip = False
    for line in str(err).splitlines():
        if _YAML_MARK.match(line):
            lines.append(line.rstrip(":"))
            skip = True  # the quoted source line and its caret follow
            continue
        if skip and (line.startswith("    ") or not line.strip()):
            continue
        skip = False
        lines.append(line[:MAX_SAFE_MESSAGE])
    return "\n".join(lines)
