"""What the action tests share: a stub platform on loopback, a recording event sink, a policy."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from comptroller.clock import VirtualClock
from comptroller.domain.ledger import Event
from comptroller.engine import Engine
from comptroller.storage.keys import SQLiteKeyStore, new_key

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


@dataclass
class Workers:
    """Gateway workers (each its own engine and connection on one ledger file) and their shared virtual clock."""

    urls: list[str]
    engines: list[Engine]
    keys: SQLiteKeyStore
    clock: VirtualClock

    def key(self, tenant: str = "acme", agent: str | None = None) -> str:
        """A new tenant key (bound to ``agent`` when given), plaintext."""
        record, plaintext = new_key(tenant=tenant, agent=agent)
        self.keys.add(record)
        return plaintext


TUMBLR = {"count_max": 3, "window_s": 86_400, "gap_s": 14_400}


class StubPlatform:
    """A platform on 127.0.0.1 that answers every GET with 200 and a page; ``published`` decides whether
    the page holds the posts it was given (a real platform) or nothing (Tumblr's 200 that published nothing)."""

    def __init__(self, *, publishes: bool) -> None:
        self.publishes = publishes
        self.posts: list[str] = []
        self.gets = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.gets += 1
                body = ("<html>" + "".join(f"<p>{p}</p>" for p in stub.posts) + "</html>").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/post"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def publish(self, text: str) -> None:
        """What the platform's publish call does: keep the post, unless it publishes nothing."""
        if self.publishes:
            self.posts.append(text)

    def __enter__(self) -> StubPlatform:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class RecordingSink:
    """An event sink that keeps what it is handed."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, events: Sequence[Event]) -> None:
        """Keep the events."""
        self.events.extend(events)

    def close(self, timeout_s: float = 5.0) -> None:
        """Nothing to flush."""
