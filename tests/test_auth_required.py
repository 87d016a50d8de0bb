"""``memfactory ui`` with a login: the real command in its own process, checked from outside.
Without credentials the page shows only the login form and every API route answers 401,
gradio_client included; with the right credentials the API works; a wrong password is
refused too."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

USER, PASSWORD = "me", "s3cret-pass"
RUN_NAME = "private-run-name-7431"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_of(request: urllib.request.Request | str,
              opener: urllib.request.OpenerDirector | None = None) -> tuple[int, str]:
    """HTTP status and body of a request (errors included)."""
    try:
        with (opener.open if opener else urllib.request.urlopen)(request, timeout=30) as resp:
            return resp.status, resp.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", errors="replace")


@pytest.fixture(scope="module", params=["flag", "env"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[str]:
    """``memfactory ui`` with a login given by ``--auth`` or ``$MEMFACTORY_UI_AUTH``."""
    from jobs.store import RunStore

    home = tmp_path_factory.mktemp("auth_home")
    RunStore(url=f"sqlite:///{home}/memfactory.db").create_run("train", {}, name=RUN_NAME)
    port = free_port()
    env = {**os.environ, "MEMFACTORY_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("MEMFACTORY_UI_AUTH", None)
    args = [sys.executable, "-m", "app.cli", "ui", "--port", str(port), "--no-scheduler"]
    if request.param == "flag":
        args += ["--auth", f"{USER}:{PASSWORD}"]
    else:
        env["MEMFACTORY_UI_AUTH"] = f"{USER}:{PASSWORD}"
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(args, env=env, cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "the workbench did not start"
                time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
        assert PASSWORD not in output


def test_without_credentials_everything_is_refused(served: str) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    # the page is only the login form: no component of the workbench, no run data
    code, page = status_of(served)
    assert code == 200 and '"auth_required":true' in page.replace(" ", "")
    assert "runs-table" not in page and RUN_NAME not in page
    for path in ("config", "gradio_api/info", "gradio_api/openapi.json"):
        assert status_of(served + path)[0] == 401, path
    call = urllib.request.Request(served + "gradio_api/call/list_runs", method="POST",
                                  data=json.dumps({"data": []}).encode(),
                                  headers={"Content-Type": "application/json"})
    assert status_of(call)[0] == 401
    join = urllib.request.Request(served + "gradio_api/queue/join", method="POST",
                                  data=json.dumps({"data": [], "fn_index": 0,
                                                   "session_hash": "x"}).encode(),
                                  headers={"Content-Type": "application/json"})
    assert status_of(join)[0] == 401
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(served, verbose=False).predict(api_name="/list_runs")
    with pytest.raises(ValueError, match="Could not login"):
        Client(served, auth=(USER, "wrong"), verbose=False).predict(api_name="/list_runs")


def test_with_credentials_the_api_and_the_page_work(served: str) -> None:
    from gradio_client import Client

    client = Client(served, auth=(USER, PASSWORD), verbose=False)
    assert [r["name"] for r in client.predict(api_name="/list_runs")] == [RUN_NAME]
    # a browser-style login: the session cookie opens the page and the config
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = urllib.parse.urlencode({"username": USER, "password": PASSWORD}).encode()
    assert status_of(urllib.request.Request(served + "login", data=form), opener)[0] == 200
    code, config = status_of(served + "config", opener)
    assert code == 200 and "runs-table" in config
    call = urllib.request.Request(served + "gradio_api/call/list_runs", method="POST",
                                  data=json.dumps({"data": [None, None, 100]}).encode(),
                                  headers={"Content-Type": "application/json"})
    code, body = status_of(call, opener)
    assert code == 200 and "event_id" in body
    code, events = status_of(served + f"gradio_api/call/list_runs/{json.loads(body)['event_id']}",
                             opener)
    assert code == 200 and RUN_NAME in events
    code, page = status_of(served, opener)
    assert code == 200 and '"auth_required":true' not in page.replace(" ", "")
    wrong = urllib.parse.urlencode({"username": USER, "password": "nope"}).encode()
    assert status_of(urllib.request.Request(served + "login", data=wrong))[0] == 400
