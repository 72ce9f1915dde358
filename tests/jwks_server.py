"""A real loopback HTTP server that serves JWK Sets, for authentication tests.

    with JwksServer() as server:
        server.set_jwks("/ehr/jwks.json", {"keys": [...]})
        url = server.url("/ehr/jwks.json")
        ...
        assert server.request_count("/ehr/jwks.json") == 1

It listens on 127.0.0.1 with an ephemeral port, in a background thread, and
counts every request per path (including paths it does not serve), so tests
can check caching, rate limiting and that a URL was never fetched.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any

try:  # imported as a top-level module by the tests (rootdir tests/ on sys.path), or as tests.*
    from loopback import LoopbackServer
except ImportError:  # pragma: no cover
    from tests.loopback import LoopbackServer


class JwksServer(LoopbackServer):
    thread_name = "jwks-server"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._routes: dict[str, tuple[int, bytes]] = {}
        self._counts: Counter[str] = Counter()
        self._log: list[str] = []
        self._delays: dict[str, float] = {}

    # -- lifecycle
    def start(self) -> JwksServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server._counts[path] += 1
                    server._log.append(path)
                    route = server._routes.get(path)
                    delay = server._delays.get(path, 0.0)
                if delay:
                    time.sleep(delay)  # a slow JWKS (the request is counted when it arrives)
                status, body = route if route is not None else (404, b'{"error": "not found"}')
                if self.command != "GET":
                    status, body = 405, b'{"error": "method not allowed"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_POST = _answer
            do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:  # silence stderr
                pass

        return self.serve(Handler)

    # -- content
    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def set_jwks(self, path: str, jwks: dict[str, Any], status: int = 200) -> None:
        self.set_raw(path, json.dumps(jwks).encode(), status)

    def set_raw(self, path: str, body: bytes, status: int = 200) -> None:
        with self._lock:
            self._routes[path] = (status, body)

    def set_delay(self, path: str, seconds: float) -> None:
        """Answer ``path`` only after ``seconds`` (0: at once)."""
        with self._lock:
            self._delays[path] = seconds

    def remove(self, path: str) -> None:
        with self._lock:
            self._routes.pop(path, None)

    # -- observation
    def request_count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(self._counts.values()) if path is None else self._counts[path]

    @property
    def requests(self) -> list[str]:
        with self._lock:
            return list(self._log)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self._log.clear()
