"""A real HTTP receiver on loopback for the webhook tests: records every request, answers from a script.

``Receiver(script)``: each request takes the next step of ``script`` (the last repeats):
an ``int`` status, a ``(status, headers)`` pair, or ``HANG`` (never answer until
``close``). ``gate`` (set by default) holds every answer until the test sets it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HANG = "hang"
Step = int | tuple[int, dict[str, str]] | str


@dataclass(frozen=True)
class Received:
    """One request as it arrived."""

    headers: dict[str, str]
    body: bytes


class Receiver:
    """A threaded HTTP server on 127.0.0.1 with a scripted answer per request."""

    def __init__(self, script: Sequence[Step] = (200,)) -> None:
        self.script = list(script)
        self.requests: list[Received] = []
        self.gate = threading.Event()
        self.gate.set()
        self._released = threading.Event()
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._arrived:
                    step = receiver.script[min(len(receiver.requests), len(receiver.script) - 1)]
                    receiver.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver._arrived.notify_all()
                receiver.gate.wait()
                if step == HANG:
                    receiver._released.wait()
                    return
                status, headers = step if isinstance(step, tuple) else (int(step), {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> bool:
        """Wait until ``count`` requests have arrived; False if ``timeout_s`` passed first."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.requests) >= count, timeout_s)

    def close(self) -> None:
        """Release held and hanging answers, stop serving."""
        self.gate.set()
        self._released.set()
        self.server.shutdown()
        self.server.server_close()
