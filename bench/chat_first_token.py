"""Seconds until the first streamed token of a chat answer with SmolLM2-135M-Instruct on CPU.

A RAG agent that stores each user message as its fact (no extractor call), over the shipped
RAG preset with MiniLM retrieval: the model is loaded once (timed apart), then each user
message is ingested and answered; printed per turn: seconds to the first streamed token and
to the whole reply, and the machine's load average. ``--pipeline memory_r1`` runs the full
Memory-R1 turn (extractor and manager calls come before the first answer token).

Run with OMP_NUM_THREADS=1 on a shared CPU: ``.venv/bin/python bench/chat_first_token.py``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "smollm2-135m-instruct"
MESSAGES = ["My sister Mia moved to Rome last spring.", "Her dog is called Rex.",
            "Where does my sister live?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="rag", choices=["rag", "memory_r1"])
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()

    from app.chat_service import ChatService
    from jobs.store import RunStore
    from memfactory_core.llm.models import prepare_model
    from memfactory_core.pipeline import load_spec

    prepare_model(args.model) if not Path(args.model).exists() else None
    spec = copy.deepcopy(load_spec(args.pipeline))
    assert isinstance(spec, dict)
    if args.pipeline == "rag":
        spec["ingest"][1] = {"component": "given_facts", "params": {"fallback": "turn_text"}}
    with tempfile.TemporaryDirectory() as tmp:
        chat = ChatService(RunStore(url=f"sqlite:///{tmp}/chat.sqlite"))
        t0 = time.perf_counter()
        sid = chat.create_session(spec, args.model)
        print(f"model load: {time.perf_counter() - t0:.2f} s")
        for i, text in enumerate(MESSAGES, 1):
            t0 = time.perf_counter()
            first = None
            tokens = 0
            for ev in chat.send(sid, text):
                if ev.kind == "token":
                    tokens += 1
                    first = first if first is not None else time.perf_counter() - t0
            total = time.perf_counter() - t0
            first_s = f"{first:.2f} s" if first is not None else "no token"
            print(f"turn {i} ({args.pipeline}): first streamed token {first_s}, whole reply "
                  f"{total:.2f} s, {tokens} streamed pieces")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
