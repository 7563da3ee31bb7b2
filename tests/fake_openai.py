"""A scripted, OpenAI-compatible chat-completions server on 127.0.0.1 (for tests; no network).

``script(n, body)`` decides the answer to the n-th request (0-based): return a ``Reply``. The
default answers every request with a completion whose text depends on the prompt.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON; bytes -> raw; None -> a normal completion
    delay: float = 0.0
    wait: threading.Event | None = None  # block until set (simulates a request in flight)


def prompt_digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()[:16]


def completion(body: dict) -> dict:
    d = prompt_digest(body)
    last = body["messages"][-1]["content"]
    kind = "film" if last.startswith("Film:") else "viewer"
    return {
        "id": f"chatcmpl-{d}", "object": "chat.completion", "created": 0, "model": body.get("model", "fake"),
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": f"Fake {kind} summary {d}."}}],
        "usage": {"prompt_tokens": len(last) // 4, "completion_tokens": 7, "total_tokens": len(last) // 4 + 7},
    }


@dataclass
class FakeOpenAI:
    script: Callable[[int, dict], Reply] = field(default=lambda n, body: Reply())
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    n = len(fake.requests)
                    fake.requests.append(body)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    reply = Reply(404, {"error": {"message": "not found"}})
                else:
                    reply = fake.script(n, body)
                if reply.wait is not None:
                    reply.wait.wait(30)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.body is None and reply.status == 200:
                    payload = json.dumps(completion(body)).encode()
                elif isinstance(reply.body, bytes):
                    payload = reply.body
                else:
                    payload = json.dumps(reply.body if reply.body is not None else
                                         {"error": {"message": f"status {reply.status}", "type": "fake"}}).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def digests(self) -> list[str]:
        return [prompt_digest(b) for b in self.requests]
