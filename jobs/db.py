"""Database engine and migrations: SQLite in WAL mode under ``MEMFACTORY_HOME`` by default,
any SQLAlchemy URL through ``MEMFACTORY_DB_URL``; Alembic upgrades the schema on open."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from memfactory_core.errors import MemFactoryError
from memfactory_core.paths import memfactory_home

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000

_upgraded: set[str] = set()
_lock = threading.Lock()


DB_URL_ENV = "MEMFACTORY_DB_URL"
_SCHEME = re.compile(r"[A-Za-z][\w+.-]*://")


def redact_url(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` in it replaced by
    ``***``, whether or not the URL parses (a password may hold ``@`` or ``/``)."""
    out = []
    rest = text
    while (m := _SCHEME.search(rest)) is not None:
        out.append(rest[:m.end()])
        rest = rest[m.end():]
        end = len(rest)
        for stop in (" ", "'", '"', "\n"):
            i = rest.find(stop)
            if i >= 0:
                end = min(end, i)
        netloc, tail = rest[:end], rest[end:]
        at = netloc.rfind("@")
        user, colon, _password = netloc[:max(at, 0)].partition(":")
        if at >= 0 and colon:
            netloc = f"{user}:***{netloc[at:]}"
        out.append(netloc)
        rest = tail
    out.append(rest)
    return "".join(out)


def default_db_url() -> str:
    """``$MEMFACTORY_DB_URL``, else a SQLite file in the workspace."""
    url = os.environ.get(DB_URL_ENV)
    if url:
        return url
    return f"sqlite:///{memfactory_home() / 'memfactory.db'}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.close()


def make_engine(url: str | None = None) -> Engine:
    """An engine for ``url`` (default :func:`default_db_url`); SQLite gets WAL, a busy
    timeout and foreign keys. Does not migrate: see :func:`upgrade`."""
    url = url or default_db_url()
    try:
        parsed = make_url(url)
    except Exception:  # sqlalchemy's message repeats the URL, password and all
        raise MemFactoryError(f"{DB_URL_ENV}: not a database URL: {redact_url(url)!r} "
                              "(expected dialect[+driver]://user:password@host/database or "
                              "sqlite:///path)") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        return _create_engine(parsed)
    except ModuleNotFoundError as exc:
        raise MemFactoryError(
            f"database {shown}: its driver is not installed ({exc.name}); install it, e.g. "
            "pip install 'psycopg[binary]' for postgresql+psycopg:// URLs") from None
    except Exception as exc:  # unknown dialect and the like
        raise MemFactoryError(f"database {shown}: {type(exc).__name__}: "
                              f"{redact_url(str(exc))}") from None


def _create_engine(parsed: URL) -> Engine:
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                  "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Any:
    """An Alembic config for ``engine`` that needs no alembic.ini."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # configparser treats "%" as interpolation (URL-escaped paths and passwords have them)
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (once per URL and process for ``head``)."""
    from alembic import command

    key = engine.url.render_as_string(hide_password=False)
    with _lock:
        if revision == "head" and key in _upgraded:
            return
        command.upgrade(alembic_config(engine), revision)
        if revision == "head":
            _upgraded.add(key)


def downgrade(engine: Engine, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base``: empty)."""
    from alembic import command

    with _lock:
        command.downgrade(alembic_config(engine), revision)
        _upgraded.discard(engine.url.render_as_string(hide_password=False))


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
