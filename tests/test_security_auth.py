"""The workbench login (throttled, given in a file rather than on the command line) and
database URLs whose passwords never appear in an error."""

from __future__ import annotations

import socket
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from app.auth import ThrottledAuth, read_auth_file
from app.cli_ui import resolve_auth
from jobs.db import make_engine, redact_url
from jobs.store import RunStore
from memfactory_core.errors import MemFactoryError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_wrong_passwords_lock_the_user_for_a_growing_delay() -> None:
    clock = FakeClock()
    auth = ThrottledAuth("admin", "right", free_failures=3, base_delay_s=2.0, clock=clock)
    assert auth("admin", "right")
    for _ in range(3):
        assert not auth("admin", "wrong")
    assert auth.locked("admin")
    assert not auth("admin", "right"), "locked: even the right password is refused"
    clock.now += 1000
    assert auth("admin", "right"), "the lock ends"
    for _ in range(4):
        assert not auth("admin", "wrong")
    clock.now += 3.0  # the fourth failure doubled the delay (2 s -> 4 s from its time)
    assert auth.locked("admin")
    clock.now += 5.0
    assert not auth.locked("admin") and auth("admin", "right")


def test_a_hundred_guesses_over_many_names_are_throttled() -> None:
    clock = FakeClock()
    auth = ThrottledAuth("admin", "right", global_limit=20, window_s=60.0, clock=clock)
    results = [auth(f"user{i}", "guess") for i in range(100)]
    assert not any(results)
    assert auth.locked("admin") and not auth("admin", "right"), "the window is full"
    clock.now += 61.0
    assert auth("admin", "right")


def test_the_login_is_never_in_repr() -> None:
    assert "right" not in repr(ThrottledAuth("admin", "right"))


def test_auth_file_and_environment_are_the_documented_ways(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MEMFACTORY_UI_AUTH", raising=False)
    monkeypatch.delenv("MEMFACTORY_UI_AUTH_FILE", raising=False)
    path = tmp_path / "login"
    path.write_text("admin:p4ss:word\n")
    assert resolve_auth(None, path) == ("admin", "p4ss:word")
    monkeypatch.setenv("MEMFACTORY_UI_AUTH_FILE", str(path))
    assert resolve_auth(None, None) == ("admin", "p4ss:word")
    monkeypatch.delenv("MEMFACTORY_UI_AUTH_FILE")
    monkeypatch.setenv("MEMFACTORY_UI_AUTH", "env:login")
    assert resolve_auth(None, None) == ("env", "login")
    assert capsys.readouterr().err == ""
    assert resolve_auth("cli:login", None) == ("cli", "login")
    assert "visible to other users" in capsys.readouterr().err
    with pytest.raises(MemFactoryError, match="not both"):
        resolve_auth("a:b", path)


def test_a_bad_auth_file_is_named_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "login"
    path.write_text("no-colon-s3cret\n")
    with pytest.raises(MemFactoryError) as caught:
        read_auth_file(path)
    assert str(path) in str(caught.value) and "s3cret" not in str(caught.value)
    with pytest.raises(MemFactoryError, match="cannot read"):
        read_auth_file(tmp_path / "missing")


def test_the_served_workbench_throttles_logins(tmp_path: Path) -> None:
    from app.ui import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(RunStore(url=f"sqlite:///{tmp_path}/db.sqlite"), None, port=port,
                  auth=("admin", "right"), prevent_thread_lock=True, quiet=True)

    def login(password: str) -> int:
        data = urllib.parse.urlencode({"username": "admin", "password": password}).encode()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", data=data,
                                        timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        assert login("right") == 200
        assert all(login("wrong") != 200 for _ in range(10))
        assert login("right") != 200, "locked after repeated failures"
    finally:
        demo.close()


# ----------------------------------------------------------------- database URLs
@pytest.mark.parametrize("url", [
    "postgresql://bob:hunter2@db.example:notaport/runs",
    "mysql://bob:hunter2@db.example/runs",  # its driver is not installed here
    "nosuchdialect://bob:hunter2@db.example/runs",
])
def test_database_url_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(MemFactoryError) as caught:
        make_engine(url)
    message = str(caught.value)
    assert "hunter2" not in message and "bob" in message


def test_a_missing_driver_is_named() -> None:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        with pytest.raises(MemFactoryError, match="driver is not installed \\(psycopg2\\)"):
            make_engine("postgresql+psycopg2://bob:hunter2@db.example/runs")
    else:
        pytest.skip("psycopg2 is installed here")


def test_redact_url_hides_passwords_with_odd_characters() -> None:
    assert redact_url("x postgresql://bob:pa@ss/w@h:5432/db y") == (
        "x postgresql://bob:***@h:5432/db y")
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_sqlite_file_is_a_clear_error_naming_it(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "runs.db"
    if damage == "garbage":
        path.write_bytes(b"this is not a database at all" * 100)
    else:
        RunStore(url=f"sqlite:///{path}").create_run("eval", {})
        con = sqlite3.connect(path)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        data = path.read_bytes()
        path.write_bytes(data[:200])
        for extra in (tmp_path / "runs.db-wal", tmp_path / "runs.db-shm"):
            extra.unlink(missing_ok=True)
    with pytest.raises(MemFactoryError, match=f"database sqlite:///{path}: cannot be opened"):
        RunStore(url=f"sqlite:///{path}").list_runs()
