"""A real HTTP server on 127.0.0.1 (ephemeral port) in a daemon thread: the base of the test servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from werkzeug.serving import make_server


class LoopbackServer:
    """``serve(handler)`` starts it; ``stop()`` or leaving the ``with`` block stops it."""

    server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
    thread_name = "loopback-server"

    def __init__(self) -> None:
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Any:  # subclasses build their handler and call serve()
        raise NotImplementedError

    def serve(self, handler: type[BaseHTTPRequestHandler], **serve_options: Any) -> Any:
        self._httpd = self.server_class(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs=serve_options, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]


@contextmanager
def serve_wsgi(app: Any, name: str = "wsgi-loopback-server") -> Iterator[str]:
    """A WSGI app (the service) served by a real threaded HTTP server on loopback; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
