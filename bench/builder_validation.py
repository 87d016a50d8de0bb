"""How fast the server answers a pipeline edit in the Build tab (target under 100 ms).

Measured side by side in one run, on the MemAgent preset and on a 24-slot pipeline:

1. ``check``: validating the draft and placing its problems (``check_draft``);
2. ``edit``: everything the builder's edit callback does (normalise the draft sent by the
   browser, validate it, write its YAML and the widget's value);
3. ``http``: the ``/validate_pipeline`` endpoint through ``gradio_client`` on a live app
   (HTTP, queue and JSON included).

Prints the median and 95th percentile of each, and their ratio to the 100 ms target.
Run with OMP_NUM_THREADS=1 on a shared CPU.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("MEMFACTORY_HOME", os.path.join(tempfile.gettempdir(), "mfhome-bench"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TARGET_MS = 100.0
REPEATS = 200
HTTP_REPEATS = 60


def _time(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()  # warm
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _line(label: str, ms: list[float]) -> str:
    ms = sorted(ms)
    median, p95 = statistics.median(ms), ms[int(0.95 * (len(ms) - 1))]
    return (f"{label:<34} median {median:7.2f} ms  p95 {p95:7.2f} ms  "
            f"p95/target {p95 / TARGET_MS:5.3f}")


def big_draft() -> dict[str, Any]:
    """MemAgent with 20 more memory writers and a bad parameter in every fourth one."""
    from app import pipeline_drafts as drafts

    draft = drafts.preset_draft("memagent")
    for i in range(20):
        draft, sid = drafts.add_slot(draft, "ingest", "memory_writer")
        if i % 4 == 0:
            draft = drafts.set_slot(draft, sid, {"max_new_tokens": 0}, "policy")
    return draft


def main() -> None:
    from app import pipeline_drafts as drafts
    from app.tabs.build import view_value

    cases = {"memagent (3 slots)": drafts.preset_draft("memagent"),
             "24 slots, 5 bad parameters": big_draft()}

    def edit(draft_json: str) -> str:
        draft = drafts.normalize_draft(draft_json)
        checked = drafts.check_draft(draft)
        drafts.draft_yaml(draft)
        return view_value(draft, checked, None, 1)

    print(f"pipeline edit latency on the server ({REPEATS} repeats, target {TARGET_MS:.0f} ms)")
    for name, draft in cases.items():
        text = json.dumps(draft)
        print(_line(f"check  {name}", _time(lambda d=draft: drafts.check_draft(d), REPEATS)))
        print(_line(f"edit   {name}", _time(lambda t=text: edit(t), REPEATS)))

    from gradio_client import Client

    from app.ui import build_app
    from jobs.store import RunStore

    with tempfile.TemporaryDirectory() as tmp:
        demo = build_app(RunStore(url=f"sqlite:///{tmp}/db.sqlite"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port,
                                prevent_thread_lock=True, quiet=True)
        try:
            client = Client(url, verbose=False)
            for name, draft in cases.items():
                text = json.dumps(draft)
                ms = _time(lambda t=text: client.predict(t, api_name="/validate_pipeline"),
                           HTTP_REPEATS)
                print(_line(f"http   {name}", ms))
        finally:
            demo.close()
    print(f"load: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
