"""What the workbench's tabs, its API and the command line share, with no Gradio in it:
reading log tails, the API's view of a run, run ids from untrusted input, config presets and
submitting a config typed in a form."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import yaml

from app.charts import run_duration
from jobs.models import Run
from jobs.store import MAX_RUN_ID, RunStore
from jobs.submit import parse_config_text, submit_run
from memfactory_core.errors import MemFactoryError
from memfactory_core.paths import CONFIGS_DIR

LOG_LINES = 200
"""Lines of a run's log the page and the API show by default."""

RUN_KINDS = ("train", "eval")


class BadRunId(MemFactoryError):
    """A run id that is not a positive whole number the store can hold."""


def parse_run_id(value: Any, what: str = "run id") -> int:
    """A run id from untrusted input (an API argument, a form): a positive integer below
    2^63. ``1.5``, ``True``, ``"abc"``, ``nan`` or ``2**64`` raise :class:`BadRunId`
    naming the value; ``3.0`` and ``"3"`` are accepted as 3."""
    if isinstance(value, bool) or value is None:
        raise BadRunId(f"{what} must be a whole number, got {value!r}")
    number: int
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise BadRunId(f"{what} must be a whole number, got {value!r}")
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                raise BadRunId(f"{what} must be a whole number, got {value!r}") from None
            return parse_run_id(as_float, what)
    else:
        raise BadRunId(f"{what} must be a whole number, got {type(value).__name__}")
    if number < 1 or number > MAX_RUN_ID:
        raise BadRunId(f"{what} must be between 1 and 2^63-1, got {value!r}")
    return number


def log_tail(path: str | os.PathLike[str] | None, lines: int = LOG_LINES,
             max_bytes: int = 1 << 20) -> str:
    """The last ``lines`` lines of a text file (at most ``max_bytes`` read from its end);
    empty when there is no such file yet."""
    if not path or lines <= 0:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            start = end
            chunk = 64 * 1024
            data = b""
            while start > 0 and data.count(b"\n") <= lines and end - start < max_bytes:
                start = max(0, start - chunk, end - max_bytes)
                f.seek(start)
                data = f.read(end - start)
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    kept = text.splitlines()
    if start > 0 and kept:
        kept = kept[1:]  # a partial first line
    return "\n".join(kept[-lines:])


def config_yaml(config: dict[str, Any] | None) -> str:
    """A config as YAML text, keys in their stored order."""
    if not config:
        return ""
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100)


def _without_path_keys(value: Any) -> Any:
    """``value`` with every mapping key ``path`` renamed ``file``: ``gradio_client`` takes a
    dict holding ``path`` for a file to download, which breaks any reply carrying one."""
    if isinstance(value, dict):
        return {("file" if k == "path" else k): _without_path_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_path_keys(v) for v in value]
    return value


def run_record(run: Run, best_reward: float | None = None, now: float | None = None,
               config: bool = False) -> dict[str, Any]:
    """A run as JSON-ready data (the API's view of it). With ``config``, the run's config as
    YAML text under ``config_yaml``: a mapping would hand ``data.path`` to clients as a
    file to fetch."""
    out: dict[str, Any] = {
        "id": run.id, "kind": run.kind, "status": run.status, "name": run.name,
        "model": run.model, "pipeline": run.pipeline, "created_at": run.created_at,
        "started_at": run.started_at, "finished_at": run.finished_at,
        "duration_s": run_duration(run, now), "best_reward": best_reward,
        "error": run.error, "cancel_requested_at": run.cancel_requested_at,
        "output_dir": run.output_dir, "log_path": run.log_path, "tags": list(run.tags or []),
        "notes": run.notes, "summary": _without_path_keys(dict(run.summary or {})),
    }
    if config:
        out["config_yaml"] = config_yaml(run.config)
    return out


def config_presets(kind: str | None = None) -> list[str]:
    """The config files shipped in ``assets/configs``; for a kind, those named
    ``<kind>_*.yaml`` (all of them when none is)."""
    names = sorted(p.name for p in CONFIGS_DIR.glob("*.yaml"))
    if kind:
        matching = [n for n in names if n.startswith(f"{kind}_")]
        return matching or names
    return names


def read_preset(name: str | None) -> str:
    """The text of a shipped config (empty for no name); only names in ``assets/configs``."""
    if not name:
        return ""
    if name not in config_presets():
        raise MemFactoryError(f"no config {name!r} in {CONFIGS_DIR}")
    return (CONFIGS_DIR / name).read_text(encoding="utf-8")


def preset_config(name: str) -> dict[str, Any]:
    """A shipped config as a mapping."""
    return parse_config_text(read_preset(name), source=name)


def submit_config(store: RunStore, kind: str, config: dict[str, Any],
                  name: str | None = None, tags: Sequence[str] = ()) -> Run:
    """Validate a config mapping and queue it as a ``kind`` run. Raises
    :class:`MemFactoryError` (a validation error lists every problem with its location)."""
    if kind not in RUN_KINDS:
        raise MemFactoryError(f"the kind must be train or eval, not {kind!r}")
    if not config:
        raise MemFactoryError(f"{kind} config: empty; choose a config or type one")
    return submit_run(store, kind, config, name=(name or "").strip() or None, tags=list(tags))


def submit_config_text(store: RunStore, kind: str, text: str,
                       name: str | None = None) -> Run:
    """Validate a YAML config typed in a form and queue it as a ``kind`` run. Raises
    :class:`MemFactoryError` (a validation error lists every problem with its location)."""
    if kind not in RUN_KINDS:
        raise MemFactoryError(f"the kind must be train or eval, not {kind!r}")
    return submit_config(store, kind, parse_config_text(text, source=f"{kind} config"), name)


def error_line(error: str | None) -> str:
    """The line of a run's error that says what went wrong (a traceback's last line)."""
    lines = [ln.strip() for ln in (error or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def last_record(store: RunStore, run_id: int) -> dict[str, Any]:
    """Where a short evaluation run stands: ``{"run_id", "status", "error", "record"}``
    with its last evaluation record (trace included) once it has one."""
    from jobs.models import FINAL_STATUSES

    run = store.get_run(run_id)
    out: dict[str, Any] = {"run_id": run.id, "status": run.status,
                           "error": error_line(run.error), "record": None,
                           "final": run.status in FINAL_STATUSES}
    if run.status == "succeeded":
        records = store.samples(run.id, kind="eval_record")
        if records:
            out["record"] = with_ingest(records[-1].data, run.output_dir)
    return out


RESULTS_READ_LIMIT = 64 << 20
"""Largest ``results.json`` read to find a record's shared ingest trace (bytes)."""


def with_ingest(record: dict[str, Any], output_dir: str | None) -> dict[str, Any]:
    """``record`` plus ``ingest_steps``: the steps of the shared ingest it names by
    ``ingest_id`` (a conversation read once for all its questions), from the run's
    ``results.json``; the record unchanged when there is none."""
    import json
    from pathlib import Path

    key = record.get("ingest_id")
    if key is None or not output_dir:
        return record
    path = Path(output_dir) / "results.json"
    try:
        if path.stat().st_size > RESULTS_READ_LIMIT:
            return record
        episodes = json.loads(path.read_text(encoding="utf-8")).get("episodes") or {}
    except (OSError, ValueError):
        return record
    found = episodes.get(str(key))
    if not isinstance(found, dict):
        return record
    return {**record, "ingest_steps": list(found.get("steps") or [])}
