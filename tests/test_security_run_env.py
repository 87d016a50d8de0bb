"""A run reads none of the server's secrets: its process gets an allow-listed environment,
the config is checked again inside it, and the OpenAI-compatible backend only reads the key
variables the operator allowed. The exfiltration probe: an endpoint on loopback records the
Authorization header of every request that runs send it."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from jobs.local_executor import LocalExecutor
from jobs.models import FINAL_STATUSES
from jobs.ray_executor import RayExecutor
from jobs.run_env import run_environment
from jobs.scheduler import Scheduler
from jobs.store import RunStore
from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.openai_backend import OpenAIBackend
from memfactory_core.paths import CONFIGS_DIR, SAMPLE_DATA_DIR

UI_LOGIN = "admin:ui-login-p4ss"
ARBITRARY_SECRET = "arbitrary-s3cret-value"
OPERATOR_OPENAI_KEY = "sk-operator-openai-key"
ALLOWED_KEY = "allowed-key-for-runs"


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server environment holding secrets, as a worker or workbench has."""
    monkeypatch.setenv("MEMFACTORY_UI_AUTH", UI_LOGIN)
    monkeypatch.setenv("SOME_SERVER_SECRET", ARBITRARY_SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", OPERATOR_OPENAI_KEY)
    monkeypatch.setenv("HF_TOKEN", "hf-token-value")
    monkeypatch.setenv("MEMFACTORY_KEY_PROBE", ALLOWED_KEY)
    monkeypatch.delenv("MEMFACTORY_ALLOWED_KEY_ENVS", raising=False)
    monkeypatch.delenv("MEMFACTORY_RESTRICTED", raising=False)


def test_run_environment_is_an_allow_list(secrets: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = run_environment({"MEMFACTORY_DB_URL": "sqlite:///run.db", "MEMFACTORY_RUN_ATTEMPT": "1"})
    for gone in ("MEMFACTORY_UI_AUTH", "SOME_SERVER_SECRET", "OPENAI_API_KEY", "HF_TOKEN"):
        assert gone not in env
    assert env["MEMFACTORY_KEY_PROBE"] == ALLOWED_KEY
    assert env["HF_HUB_OFFLINE"] == "1" and env["OMP_NUM_THREADS"] == "1"
    assert env["PATH"] and env["MEMFACTORY_DB_URL"] == "sqlite:///run.db"
    assert env["MEMFACTORY_RESTRICTED"] == "1"
    monkeypatch.setenv("MEMFACTORY_ALLOWED_KEY_ENVS", "OPENAI_API_KEY")
    assert run_environment({})["OPENAI_API_KEY"] == OPERATOR_OPENAI_KEY


def test_a_launched_run_process_sees_no_secret(secrets: None, tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    script = f"import json, os; open({str(out)!r}, 'w').write(json.dumps(dict(os.environ)))"
    executor = LocalExecutor(command=lambda run_id: [sys.executable, "-c", script])
    handle = executor.launch(1, {"MEMFACTORY_RUN_ATTEMPT": "1"}, tmp_path / "run.log")
    deadline = time.monotonic() + 60
    while executor.poll(handle) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    env = json.loads(out.read_text())
    values = "\n".join(env.values())
    for secret in (UI_LOGIN, ARBITRARY_SECRET, OPERATOR_OPENAI_KEY, "hf-token-value"):
        assert secret not in values
    assert env["MEMFACTORY_RUN_ATTEMPT"] == "1" and env["MEMFACTORY_KEY_PROBE"] == ALLOWED_KEY


def test_ray_jobs_get_no_secret(secrets: None, tmp_path: Path) -> None:
    ex = RayExecutor("127.0.0.1:8265", client=object())
    env = ex.job_runtime_env({"MEMFACTORY_DB_URL": "sqlite:///x.db"})["env_vars"]
    assert "MEMFACTORY_UI_AUTH" not in env and "SOME_SERVER_SECRET" not in env
    assert env["MEMFACTORY_KEY_PROBE"] == ALLOWED_KEY and env["MEMFACTORY_DB_URL"] == "sqlite:///x.db"


def test_backend_in_a_restricted_process_reads_only_allowed_keys(
        secrets: None, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://127.0.0.1:9/v1"
    assert OpenAIBackend("m", url, api_key_env="SOME_SERVER_SECRET")._client.api_key == (
        ARBITRARY_SECRET), "a local user may name any variable"
    assert OpenAIBackend("m", url)._client.api_key == OPERATOR_OPENAI_KEY
    monkeypatch.setenv("MEMFACTORY_RESTRICTED", "1")
    for name in ("SOME_SERVER_SECRET", "MEMFACTORY_UI_AUTH", "MEMFACTORY_DB_URL"):
        with pytest.raises(MemFactoryError, match=f"api_key_env '{name}' is not allowed"):
            OpenAIBackend("m", url, api_key_env=name)
    assert OpenAIBackend("m", url)._client.api_key == "EMPTY", "the default key is not allowed"
    assert OpenAIBackend("m", url, api_key_env="MEMFACTORY_KEY_PROBE")._client.api_key == (
        ALLOWED_KEY)


# --------------------------------------------------------------- exfiltration probe
class Recorder(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that records each request's Authorization."""

    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        type(self).seen.append(self.headers.get("Authorization") or "")
        body = json.dumps({
            "id": "x", "object": "chat.completion", "created": 0, "model": "probe",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "\\boxed{Paris}"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    seen: ClassVar[list[str]] = []
    handler = type("ProbeHandler", (Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


def probe_config(base_url: str, key_env: str | None) -> dict[str, Any]:
    config = yaml.safe_load((CONFIGS_DIR / "eval_memagent_tiny.yaml").read_text())
    options: dict[str, Any] = {"base_url": base_url, "max_retries": 0}
    if key_env is not None:
        options["api_key_env"] = key_env
    config["model"] = {"model": "probe", "backend": "openai", "options": options}
    config["data"] = {"path": str(SAMPLE_DATA_DIR / "hotpotqa_sample.jsonl"), "docs": 2,
                      "limit": 1}
    config["pipeline_params"]["token_chunker"] = {"chunk_tokens": 4000, "max_chunks": 1}
    return config


@pytest.mark.slow
def test_exfiltration_probe_records_nothing_secret(
        secrets: None, listener: tuple[str, list[str]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs naming the workbench login, the database URL and an arbitrary secret are
    refused through the app API; written into the store directly they fail in the run
    process; the endpoint never sees a secret, and does see the key the operator allowed."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from app.ui import build_app

    base_url, seen = listener
    monkeypatch.setenv("MEMFACTORY_HOME", str(tmp_path / "home"))
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    monkeypatch.setenv("MEMFACTORY_DB_URL", store.url)
    named = ("MEMFACTORY_UI_AUTH", "MEMFACTORY_DB_URL", "SOME_SERVER_SECRET")

    demo = build_app(store)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None,
                            prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        for name in named:
            text = yaml.safe_dump(probe_config(base_url, name))
            with pytest.raises(AppError, match="is not allowed"):
                client.predict("eval", text, f"probe {name}", api_name="/submit_run")
        assert store.list_runs() == []
    finally:
        demo.close()

    # written past the submission check: the run process checks again, and has no secret
    runs = {name: store.create_run("eval", probe_config(base_url, name)).id
            for name in (*named, "MEMFACTORY_KEY_PROBE", None)}
    for run_id in runs.values():
        config = store.get_run(run_id).config
        config["output_dir"] = store.get_run(run_id).output_dir
        store.update_run(run_id, config=config)
    scheduler = Scheduler(store, max_concurrent=2, heartbeat_s=0.5, poll_s=0.1)
    scheduler.start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and any(
                store.get_run(i).status not in FINAL_STATUSES for i in runs.values()):
            time.sleep(0.2)
    finally:
        scheduler.stop(terminate_runs=True)
    final = {name: store.get_run(i) for name, i in runs.items()}
    for name in named:
        assert final[name].status == "failed"
        assert f"{name!r} is not allowed" in (final[name].error or "")
    assert final["MEMFACTORY_KEY_PROBE"].status == "succeeded", final["MEMFACTORY_KEY_PROBE"].error
    assert final[None].status == "succeeded", final[None].error
    assert f"Bearer {ALLOWED_KEY}" in seen, "the probe sees what runs send"
    assert "Bearer EMPTY" in seen, "a config naming no key sends none of the server's"
    recorded = "\n".join(seen)
    for secret in (UI_LOGIN, "ui-login-p4ss", store.url, ARBITRARY_SECRET,
                   OPERATOR_OPENAI_KEY):
        assert secret not in recorded
