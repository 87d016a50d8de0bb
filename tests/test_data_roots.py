"""A submitted config may only name files under the data roots the operator allows: the
workspace (not its database or the files directly in it), ``assets/``, the start folder and
``--data-root`` folders. Paths are resolved (``..``, symlinks) first; refusals name the field
and the path, at submission (the API, ``memfactory submit``) and again in the run process.
The local ``memfactory eval`` / ``train`` user keeps full access."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gradio_client import Client
from gradio_client.exceptions import AppError

from jobs.data_roots import (
    DATA_ROOTS_ENV,
    DENIED_PATHS_ENV,
    DataRoots,
    safe_error_message,
    start_dir_root,
)
from jobs.local_executor import LocalExecutor
from jobs.models import FINAL_STATUSES
from jobs.run_env import run_environment
from jobs.scheduler import Scheduler
from jobs.store import RunStore
from jobs.submit import submit_run
from memfactory_core.data.loaders import load_episodes
from memfactory_core.errors import MemFactoryError, ValidationError
from memfactory_core.paths import ASSETS_DIR, CONFIGS_DIR
from tests.app_support import api_client

REPO = ASSETS_DIR.parent
TINY_EVAL = CONFIGS_DIR / "eval_memagent_tiny.yaml"
SECRET = "s3cr3t-VALUE-4242"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace of the test's own (sharing the session's model cache) and no data roots
    or denied files beyond the defaults; the test runs from the repository root."""
    shared_models = Path(os.environ["MEMFACTORY_HOME"]) / "models"
    shared_models.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "home"
    path.mkdir()
    (path / "models").symlink_to(shared_models, target_is_directory=True)
    monkeypatch.setenv("MEMFACTORY_HOME", str(path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in (DATA_ROOTS_ENV, DENIED_PATHS_ENV, "MEMFACTORY_UI_AUTH_FILE",
                 "MEMFACTORY_DB_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO)
    return path


@pytest.fixture
def store(home: Path, tmp_path: Path) -> RunStore:
    return RunStore(url=f"sqlite:///{home}/memfactory.db")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder under no data root, holding a secret and a valid data file."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_text(f"password={SECRET}\n")
    (path / "data.jsonl").write_text((ASSETS_DIR / "data" / "hotpotqa_sample.jsonl")
                                     .read_text().splitlines()[0] + "\n")
    return path


def eval_config(**changes: Any) -> dict[str, Any]:
    config = yaml.safe_load(TINY_EVAL.read_text())
    config.update(changes)
    return config


def data(path: str | Path, **more: Any) -> dict[str, Any]:
    return {"path": str(path), "docs": 2, "limit": 1, **more}


def refused(store: RunStore, config: dict[str, Any], kind: str = "eval") -> str:
    with pytest.raises(ValidationError) as caught:
        submit_run(store, kind, config, base_dir=REPO)
    assert store.list_runs() == [], "nothing is queued"
    return str(caught.value)


# ----------------------------------------------------------------------- the rules
def test_system_files_are_refused_with_the_field_and_the_path(store: RunStore) -> None:
    message = refused(store, eval_config(data=data("/etc/passwd")))
    assert "data.path: '/etc/passwd' is outside the data folders" in message
    assert "--data-root" in message and "root:" not in message


def test_a_path_outside_is_refused_whether_or_not_it_exists(store: RunStore) -> None:
    message = refused(store, eval_config(data=data("/no/such/dir/x.jsonl")))
    assert "is outside the data folders" in message and "no such file" not in message


def test_dot_dot_is_resolved_before_the_check(store: RunStore, home: Path) -> None:
    sneaky = f"{home}/data/../../outside/secret.txt"
    message = refused(store, eval_config(data=data(sneaky)))
    assert f"data.path: {sneaky!r}" in message and "outside the data folders" in message
    relative = "assets/../../" + "x/secret.txt"
    assert "outside the data folders" in refused(store, eval_config(data=data(relative)))


def test_a_symlink_leaving_a_root_is_refused(store: RunStore, home: Path,
                                             outside: Path) -> None:
    (home / "data").mkdir()
    (home / "data" / "link.jsonl").symlink_to(outside / "data.jsonl")
    message = refused(store, eval_config(data=data(home / "data" / "link.jsonl")))
    assert f"({outside / 'data.jsonl'})" in message and "outside the data folders" in message
    (home / "data" / "dir").symlink_to(outside, target_is_directory=True)
    assert "outside the data folders" in refused(
        store, eval_config(data=data(home / "data" / "dir" / "data.jsonl")))


def test_the_database_and_the_workspace_own_files_are_refused(
        store: RunStore, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (home / "memfactory.db").is_file()
    message = refused(store, eval_config(data=data(home / "memfactory.db")))
    assert "data.path" in message and "a file of the server that runs may not read" in message
    wal = refused(store, eval_config(data=data(f"{home}/memfactory.db-wal")))
    assert "may not read" in wal
    (home / "auth.txt").write_text(f"admin:{SECRET}\n")
    assert "directly in it" in refused(store, eval_config(data=data(home / "auth.txt")))
    # a database or login file kept elsewhere, even under a root
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv(DATA_ROOTS_ENV, str(elsewhere))
    other_db = RunStore(url=f"sqlite:///{elsewhere}/runs.sqlite")
    assert "may not read" in refused(
        other_db, eval_config(data=data(elsewhere / "runs.sqlite")))
    login = tmp_path / "login"
    login.mkdir()
    (login / "auth").write_text(f"admin:{SECRET}\n")
    monkeypatch.setenv(DATA_ROOTS_ENV, str(login))
    monkeypatch.setenv("MEMFACTORY_UI_AUTH_FILE", str(login / "auth"))
    assert "may not read" in refused(store, eval_config(data=data(login / "auth")))


def test_hidden_entries_below_a_root_are_refused(store: RunStore, home: Path) -> None:
    (home / "data" / ".private").mkdir(parents=True)
    message = refused(store, eval_config(data=data(home / "data" / ".private" / "x.jsonl")))
    assert "is hidden" in message
    assert "is hidden" in refused(store, eval_config(data=data(REPO / ".git" / "config")))


def test_every_path_field_is_checked(store: RunStore, outside: Path) -> None:
    secret = str(outside / "secret.txt")
    config = eval_config(data=data(ASSETS_DIR / "data" / "hotpotqa_sample.jsonl",
                                   exclude=secret),
                         pipeline=str(outside / "p.yaml"),
                         roles={"judge": {"model": str(outside)}},
                         model={"model": "tiny-random", "backend": "vllm",
                                "options": {"tokenizer": str(outside),
                                            "download_dir": str(outside)}},
                         pipeline_params={"reranker": {"checkpoint": secret}})
    message = refused(store, config)
    for field in ("data.exclude", "pipeline", "roles.judge.model",
                  "pipeline_params.reranker.checkpoint", "model.options.tokenizer",
                  "model.options.download_dir"):
        assert f"{field}: " in message, field
    train = yaml.safe_load((CONFIGS_DIR / "train_memory_r1_manager_tiny.yaml").read_text())
    train["memory_r1"]["validation"]["path"] = secret
    train["memory_r1"]["cache_dir"] = str(outside)
    train["model"] = {"model": str(outside)}
    message = refused(store, train, kind="train")
    for field in ("memory_r1.validation.path", "memory_r1.cache_dir", "model.model"):
        assert f"{field}: " in message, field


def test_paths_named_inside_an_allowed_pipeline_file_are_checked(
        store: RunStore, home: Path, outside: Path) -> None:
    spec = yaml.safe_load((ASSETS_DIR / "pipelines" / "rmm.yaml").read_text())
    [index] = [i for i, slot in enumerate(spec["query"]) if slot["component"] == "reranker"]
    spec["query"][index]["params"]["checkpoint"] = str(outside / "secret.txt")
    (home / "pipelines").mkdir()
    (home / "pipelines" / "mine.yaml").write_text(yaml.safe_dump(spec))
    config = yaml.safe_load((CONFIGS_DIR / "eval_rmm_tiny.yaml").read_text())
    config["pipeline"] = str(home / "pipelines" / "mine.yaml")
    message = refused(store, config)
    assert f"query.{index}.params.checkpoint: " in message
    assert "outside the data folders" in message


def test_files_under_a_root_are_accepted(store: RunStore, home: Path, outside: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "data" / "uploads").mkdir(parents=True)
    mine = home / "data" / "uploads" / "mine.jsonl"
    mine.write_text((outside / "data.jsonl").read_text())
    run = submit_run(store, "eval", eval_config(data=data(mine)), base_dir=REPO)
    assert run.status == "queued" and run.config["data"]["path"] == str(mine)
    shipped = submit_run(store, "eval", eval_config(), base_dir=REPO)
    assert shipped.config["data"]["path"] == str(ASSETS_DIR / "data" / "hotpotqa_sample.jsonl")
    # an operator's extra root (a path with '..' that stays inside is fine)
    monkeypatch.setenv(DATA_ROOTS_ENV, str(outside))
    (outside / "sub").mkdir()
    inside = f"{outside}/sub/../data.jsonl"
    assert submit_run(store, "eval", eval_config(data=data(inside)),
                      base_dir=REPO).status == "queued"


def test_the_start_folder_is_not_a_root_when_it_is_the_home_folder_or_above() -> None:
    assert start_dir_root(Path.home()) is None
    assert start_dir_root(Path("/")) is None
    assert start_dir_root(REPO) == REPO.resolve()


# ------------------------------------------------------------------------ the API


@pytest.fixture
def client(store: RunStore) -> Iterator[Client]:
    from app.ui import build_app

    demo = build_app(store)
    with api_client(demo) as client:
        yield client


def test_the_api_refuses_server_files(client: Client, store: RunStore, home: Path) -> None:
    text = TINY_EVAL.read_text()
    for path, shown in (("/etc/passwd", "/etc/passwd"),
                        (f"{home}/memfactory.db", f"{home}/memfactory.db"),
                        # enough '..' to reach / from wherever the checkout lies
                        ("assets/" + "../" * 40 + "etc/passwd", "/etc/passwd")):
        with pytest.raises(AppError) as caught:
            client.predict("eval", text.replace("assets/data/hotpotqa_sample.jsonl", path),
                           None, api_name="/submit_run")
        message = str(caught.value)
        assert f"data.path: '{shown}'" in message, message
        assert "root:" not in message and "SQLite" not in message
    assert store.list_runs() == []
    record = client.predict("eval", text, "shipped", api_name="/submit_run")
    assert record["status"] == "queued"


def test_memfactory_submit_refuses_and_data_root_allows(
        store: RunStore, outside: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import main

    monkeypatch.setenv("MEMFACTORY_DB_URL", store.url)

    def submit(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["memfactory", "submit", "eval", str(TINY_EVAL),
                                          *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, " ".join(capsys.readouterr().err.split())

    code, err = submit(f"data.path={outside / 'data.jsonl'}", "data.docs=2")
    assert code == 2 and "data.path" in err and "outside the data folders" in err
    assert store.list_runs() == []
    code, err = submit(f"data.path={outside / 'data.jsonl'}", "data.docs=2",
                       "--data-root", str(outside))
    assert code == 0, err
    assert len(store.list_runs()) == 1


# ----------------------------------------------------------------- the run process
def run_to_the_end(store: RunStore, *run_ids: int) -> None:
    scheduler = Scheduler(store, LocalExecutor(), gpus=[], poll_s=0.1, heartbeat_s=1.0,
                          grace_s=10.0)
    deadline = time.monotonic() + 300
    try:
        while any(store.get_run(i).status not in FINAL_STATUSES for i in run_ids):
            assert time.monotonic() < deadline, "the runs did not finish"
            scheduler.tick()
            time.sleep(0.1)
    finally:
        scheduler.stop(terminate_runs=True)


def test_the_run_process_checks_again(store: RunStore, home: Path, outside: Path) -> None:
    """A config that reached the store without passing submission (another tool, an older
    version) still cannot read a server file: the run fails naming the field."""
    passwd = store.create_run("eval", eval_config(data=data("/etc/passwd"),
                                                  output_dir=str(home / "runs" / "x")))
    db_file = store.create_run("eval", eval_config(
        data=data(str(home / "memfactory.db")), output_dir=str(home / "runs" / "y")))
    run_to_the_end(store, passwd.id, db_file.id)
    for run, path in ((passwd, "/etc/passwd"), (db_file, str(home / "memfactory.db"))):
        done = store.get_run(run.id)
        assert done.status == "failed"
        assert "not allowed for a submitted run" in (done.error or "")
        assert f"data.path: {path!r}" in (done.error or ""), done.error
        log = Path(done.log_path or "").read_text()
        assert "root:x:0" not in log and "SQLite format" not in log


def test_a_run_error_never_echoes_what_a_data_file_holds(store: RunStore, home: Path) -> None:
    (home / "data").mkdir()
    keys = home / "data" / "keys.json"
    keys.write_text(json.dumps({SECRET: 1, "api": SECRET}))
    conv = home / "data" / "conv.json"
    conv.write_text(json.dumps([{"sample_id": SECRET, "conversation": {}, "qa": []}]))
    runs = [store.create_run("eval", eval_config(
        data={"path": str(path)}, output_dir=str(home / "runs" / path.stem)))
        for path in (keys, conv)]
    run_to_the_end(store, *(r.id for r in runs))
    for run, path in zip(runs, (keys, conv), strict=True):
        done = store.get_run(run.id)
        assert done.status == "failed"
        assert str(path) in (done.error or "")
        assert SECRET not in (done.error or ""), done.error
        assert SECRET not in Path(done.log_path or "").read_text()


def test_safe_messages_keep_the_location_and_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"b": \n')
    with pytest.raises(MemFactoryError) as caught:
        load_episodes(bad, format="longmemeval")
    assert safe_error_message(caught.value) == str(caught.value)  # nothing to hide
    locomo = tmp_path / "locomo.json"
    locomo.write_text(json.dumps([{"sample_id": SECRET, "conversation": {}, "qa": []}]))
    with pytest.raises(MemFactoryError) as caught:
        load_episodes(locomo)
    assert SECRET in str(caught.value)  # the local user sees everything
    safe = safe_error_message(caught.value)
    assert SECRET not in safe and f"{locomo}:1" in safe and "speaker_a" in safe
    yaml_error = MemFactoryError(f'p.yaml: not valid YAML: while parsing\n  in "<unicode '
                                 f'string>", line 3, column 1:\n    key: {SECRET}\n    ^')
    safe = safe_error_message(yaml_error)
    assert SECRET not in safe and "line 3, column 1" in safe


def test_the_run_environment_carries_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    env = run_environment({}, {DATA_ROOTS_ENV: "/srv/data", DENIED_PATHS_ENV: "/srv/auth",
                               "MEMFACTORY_UI_AUTH_FILE": "/srv/auth"})
    assert env[DATA_ROOTS_ENV] == "/srv/data" and env[DENIED_PATHS_ENV] == "/srv/auth"
    roots = DataRoots.current(env={DATA_ROOTS_ENV: "/srv/data", DENIED_PATHS_ENV: "/srv/auth"})
    assert Path("/srv/data").resolve() in roots.roots
    assert roots.refusal("/srv/data/x.jsonl") is None
    assert "may not read" in (roots.refusal("/srv/auth") or "")


# ----------------------------------------------------------- the local user is trusted
def test_the_local_eval_command_reads_any_file(home: Path, outside: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``memfactory eval`` on a file under no root gets as far as reading it (here: a file
    that is not data), with no refusal."""
    from app.cli import main

    monkeypatch.setattr(sys, "argv", [
        "memfactory", "eval", str(TINY_EVAL), f"data.path={outside / 'secret.txt'}",
        f"output_dir={outside / 'out'}", "--quiet"])
    with pytest.raises(SystemExit) as caught:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert caught.value.code == 2
    assert "invalid JSON" in err and "outside the data folders" not in err


@pytest.mark.slow
def test_an_operator_root_reaches_the_run_process(store: RunStore, home: Path, outside: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``--data-root`` is recorded in the worker's environment and the run process (which
    gets an allow-listed environment) checks against it too: the run reads the file."""
    from jobs.data_roots import record_policy

    record_policy([str(outside)])
    run = submit_run(store, "eval", eval_config(data=data(outside / "data.jsonl")),
                     base_dir=REPO)
    run_to_the_end(store, run.id)
    done = store.get_run(run.id)
    assert done.status == "succeeded", done.error
    assert done.summary is not None and done.summary["n"] == 1


@pytest.mark.parametrize("command", ["worker", "ui", "submit"])
def test_data_root_must_be_an_existing_folder(command: str, home: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import main

    extra = ["eval", str(TINY_EVAL)] if command == "submit" else []
    monkeypatch.setattr(sys, "argv", ["memfactory", command, *extra, "--data-root",
                                      str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as caught:
        main()
    assert caught.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--data-root {tmp_path / 'missing'}: not an existing folder" in err
