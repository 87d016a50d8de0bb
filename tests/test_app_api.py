"""The workbench's named API endpoints, driven with gradio_client against a live app."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from gradio_client import Client
from gradio_client.exceptions import AppError
from typer.testing import CliRunner

from app.cli import app
from app.cli_ui import parse_auth
from app.ui import build_app, check_exposure, is_loopback
from jobs.store import MetricRow, RunStore
from memfactory_core.errors import MemFactoryError
from memfactory_core.paths import CONFIGS_DIR
from tests.app_support import api_client, free_port


@pytest.fixture()
def store(tmp_path: Path) -> RunStore:
    return RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")


@pytest.fixture()
def client(store: RunStore) -> Iterator[Client]:
    demo = build_app(store)
    with api_client(demo) as client:
        yield client


def test_endpoints_are_named(client: Client) -> None:
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/list_runs", "/get_run", "/run_metrics", "/run_log", "/submit_run",
            "/cancel_run"} <= set(endpoints)
    assert {"/pipeline_catalog", "/validate_pipeline", "/pipeline_add", "/pipeline_move",
            "/pipeline_remove", "/pipeline_set_params", "/pipeline_yaml",
            "/pipeline_from_yaml", "/save_pipeline", "/list_pipelines", "/load_pipeline",
            "/try_pipeline", "/run_trace"} <= set(endpoints)


def test_list_runs_and_metrics(client: Client, store: RunStore) -> None:
    first = store.create_run("train", {"max_steps": 5}, name="a", model="tiny-random")
    second = store.create_run("eval", {}, name="b")
    store.add_metrics(first.id, [MetricRow(s, "reward", s / 10, time.time()) for s in (1, 2, 3)])
    listed = client.predict(api_name="/list_runs")
    assert [r["id"] for r in listed] == [second.id, first.id]
    assert listed[1]["best_reward"] == pytest.approx(0.3)
    assert listed[1]["status"] == "queued" and listed[1]["model"] == "tiny-random"
    only_eval = client.predict(None, "eval", 10, api_name="/list_runs")
    assert [r["id"] for r in only_eval] == [second.id]
    metrics = client.predict(first.id, api_name="/run_metrics")
    assert metrics == {"reward": {"steps": [1, 2, 3], "values": [0.1, 0.2, 0.3]}}
    detail = client.predict(first.id, api_name="/get_run")
    assert yaml.safe_load(detail["config_yaml"]) == {"max_steps": 5} and detail["name"] == "a"
    Path(first.log_path).parent.mkdir(parents=True, exist_ok=True)
    Path(first.log_path).write_text("".join(f"l{i}\n" for i in range(300)))
    assert client.predict(first.id, 2, api_name="/run_log") == "l298\nl299"
    with pytest.raises(AppError, match="no run with id 999"):
        client.predict(999, api_name="/get_run")


def test_submit_valid_config_queues_a_run(client: Client, store: RunStore) -> None:
    text = (CONFIGS_DIR / "train_synthetic_tiny.yaml").read_text()
    record = client.predict("train", text, "from the api", api_name="/submit_run")
    assert record["status"] == "queued" and record["name"] == "from the api"
    run = store.get_run(record["id"])
    assert run.status == "queued" and run.kind == "train"
    assert run.config["max_steps"] == 60
    assert run.config["output_dir"] == run.output_dir  # the run's own folder


def test_submit_invalid_config_reports_every_location(client: Client,
                                                      store: RunStore) -> None:
    text = (CONFIGS_DIR / "train_synthetic_tiny.yaml").read_text()
    text = text.replace("learning_rate: 0.02", "learning_rate: fast")
    text = text.replace("lora: {r: 8,", "lora: {r: many,")
    with pytest.raises(AppError) as err:
        client.predict("train", text, None, api_name="/submit_run")
    message = str(err.value)
    assert "learning_rate" in message and "lora.r" in message
    assert "2 problem(s)" in message
    with pytest.raises(AppError, match="not valid YAML"):
        client.predict("train", "model: [unclosed", None, api_name="/submit_run")
    with pytest.raises(AppError, match="train or eval"):
        client.predict("deploy", text, None, api_name="/submit_run")
    assert store.list_runs() == []


def test_get_run_of_a_config_with_a_data_path(client: Client, store: RunStore) -> None:
    """A config holding ``data.path`` comes back as YAML text, not as a file to fetch."""
    text = (CONFIGS_DIR / "eval_memagent_tiny.yaml").read_text()
    record = client.predict("eval", text, "with a path", api_name="/submit_run")
    store.update_run(record["id"], summary={"config": {"data": {"path": "/x.jsonl"}},
                                            "em": 0.5})
    detail = client.predict(record["id"], api_name="/get_run")
    config = yaml.safe_load(detail["config_yaml"])
    assert config["data"]["path"].endswith("assets/data/hotpotqa_sample.jsonl")
    assert detail["summary"]["config"]["data"] == {"file": "/x.jsonl"}
    listed = client.predict(api_name="/list_runs")
    assert listed[0]["id"] == record["id"]


@pytest.mark.parametrize("bad", [1.5, 2**63, 2**70, -1, 0, "abc", True])
def test_run_ids_that_are_not_whole_numbers_are_refused(client: Client, store: RunStore,
                                                        bad: object) -> None:
    run = store.create_run("train", {})
    for endpoint in ("/get_run", "/cancel_run", "/run_log", "/run_metrics", "/run_trace"):
        with pytest.raises(AppError, match="run id must be"):
            client.predict(bad, api_name=endpoint)
    assert store.get_run(run.id).status == "queued"  # 1.5 did not cancel run 1


def test_cancel(client: Client, store: RunStore) -> None:
    queued = store.create_run("train", {})
    assert client.predict(queued.id, api_name="/cancel_run") == "cancelled"
    assert store.get_run(queued.id).status == "cancelled"
    active = store.create_run("train", {})
    store.claim_next("w")
    store.mark_running(active.id, pid=1)
    assert client.predict(active.id, api_name="/cancel_run") == "running"
    assert store.get_run(active.id).cancel_requested_at is not None
    with pytest.raises(AppError, match="no run with id"):
        client.predict(12345, api_name="/cancel_run")


def test_exposure_rules() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5", "[::1]"):
        assert is_loopback(host)
        check_exposure(host, None)
    for host in ("0.0.0.0", "192.168.1.4", "example.org", "::"):
        assert not is_loopback(host)
        with pytest.raises(MemFactoryError, match="without authentication"):
            check_exposure(host, None)
        check_exposure(host, ("me", "secret"))
    with pytest.raises(MemFactoryError, match="share link"):
        check_exposure("127.0.0.1", None, share=True)


def test_ui_command_refuses_exposure_without_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMFACTORY_UI_AUTH", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["ui", "--host", "0.0.0.0"])
    assert isinstance(result.exception, MemFactoryError)
    assert "without authentication" in str(result.exception)
    result = runner.invoke(app, ["ui", "--share", "on"])
    assert "share link" in str(result.exception)
    monkeypatch.setenv("MEMFACTORY_UI_AUTH", "only-a-user-s3cret")
    result = runner.invoke(app, ["ui", "--host", "0.0.0.0"])
    assert "USER:PASSWORD" in str(result.exception)
    assert "s3cret" not in str(result.exception) + result.output
    assert parse_auth("me:pa:ss") == ("me", "pa:ss")
    assert parse_auth(None) is None


@pytest.mark.slow
def test_ui_command_serves_and_stops(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MEMFACTORY_HOME": str(tmp_path), "MEMFACTORY_UI_AUTH": "me:s3cret",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "ui", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "the workbench did not start"
                time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert f"127.0.0.1:{port}" in output and "login required (user me)" in output
    assert "s3cret" not in output
    assert "workbench stopped" in output
