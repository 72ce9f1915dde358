"""A WSGI app served through granian's RSGI interface with the request body read before a thread is used.

granian's own WSGI interface hands a request to a Python thread as soon as its headers are in and lets
``wsgi.input`` block that thread while the body trickles in: 16 clients sending a body one byte a second
would hold every thread of 2 workers x 8 threads (measured: bench/bench_slow_clients.py). Here the body is
awaited on the worker's event loop (a task per request, no thread), with a deadline, and only a request
that has fully arrived runs the WSGI app, on a pool of ``threads`` threads. What the app sees is plain
WSGI (PEP 3333): the same Flask app as under any WSGI server.

- The app's own body limit is honoured before anything is read: a ``Content-Length`` above
  ``max_body_bytes`` reaches the app with an empty body and that length, so the app answers its usual 413;
  a chunked body is read up to the limit and no further (the app sees a body at the limit: 413 too).
- A body not complete within ``body_timeout`` seconds is answered 408 and the connection closed.
- Responses are collected whole (the app answers small JSON documents) and sent in one piece.

Generic server plumbing: nothing here knows about CDS Hooks.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_TIMEOUT_BODY = b'{"message": "request body not received in time"}'
_ERROR_BODY = b'{"message": "internal error"}'
log = logging.getLogger("cds.server")


def _split_host_port(value: str, default_port: str) -> tuple[str, str]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return value, default_port
    return host.strip("[]"), port


class BufferedWSGI:
    """An RSGI application (``__rsgi__``) running ``app`` (WSGI) on ``threads`` threads per process."""

    def __init__(self, app: WSGIApp, threads: int, max_body_bytes: int | None, body_timeout: float):
        self.app = app
        self.threads = threads
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self._pool: ThreadPoolExecutor | None = None

    # RSGI life cycle: one event loop per worker process
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="cds-request")

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # requests in progress finish before the worker exits

    async def _read_body(self, protocol: Any, length: int | None) -> tuple[bytes, int | None]:
        """The body, and the Content-Length the app is to see (None: as the client sent it)."""
        limit = self.max_body_bytes
        if length is not None:
            if limit is not None and length > limit:
                return b"", length  # the app refuses it from the length alone: nothing is read
            return await protocol(), None
        chunks, size = [], 0
        async for chunk in protocol:
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                return b"", size  # cut: the app answers 413 from the length
        body = b"".join(chunks)
        return body, len(body)

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":  # pragma: no cover - websockets are off
            return
        headers = scope.headers.items()
        length: int | None = None
        for name, value in headers:
            if name == "content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
                break
        try:
            body, seen_length = await asyncio.wait_for(self._read_body(protocol, length), self.body_timeout)
        except TimeoutError:
            protocol.response_bytes(408, [("content-type", "application/json"), ("connection", "close")], _TIMEOUT_BODY)
            return
        except Exception:  # the client went away while sending
            return
        environ = self._environ(scope, headers, body, seen_length)
        loop = asyncio.get_running_loop()
        try:
            status, response_headers, payload = await loop.run_in_executor(self._pool, self._call, environ)
        except Exception:  # the app answers its own errors; this is a fault of the bridge or the server
            log.exception("request failed outside the application")
            protocol.response_bytes(500, [("content-type", "application/json")], _ERROR_BODY)
            return
        protocol.response_bytes(status, response_headers, payload)

    def _environ(self, scope: Any, headers: list[tuple[str, str]], body: bytes, length: int | None) -> dict[str, Any]:
        server_name, server_port = _split_host_port(scope.server, "80")
        client_addr, client_port = _split_host_port(scope.client, "0")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": scope.path.encode("utf-8").decode("latin-1"),
            "QUERY_STRING": scope.query_string,
            "SERVER_NAME": server_name,
            "SERVER_PORT": server_port,
            "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
            "REMOTE_ADDR": client_addr,
            "REMOTE_PORT": client_port,
            "SERVER_SOFTWARE": "granian (cds.rsgi)",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.scheme,
            "wsgi.input": io.BytesIO(body),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in headers:
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name == "content-length":
                environ["CONTENT_LENGTH"] = value
            elif name == "transfer-encoding":
                continue  # the body is whole now
            else:
                key = "HTTP_" + name.upper().replace("-", "_")
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        if length is not None:
            environ["CONTENT_LENGTH"] = str(length)
        return environ

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            if exc_info and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return written.append

        written: list[bytes] = []
        result = self.app(environ, start_response)
        try:
            written.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        return int(status.split(" ", 1)[0]), headers, b"".join(written)


#: a file the launcher names for its workers: one that refuses to start writes its exit code there
REFUSED_ENV = "_CDS_SERVE_REFUSED_FILE"


def production_app() -> BufferedWSGI:
    """The production target (cds/serve.py, a granian factory called in each worker): ``cds.wsgi:app``
    behind the bridge, with ``CDS_THREADS`` threads, the app's body limit and ``CDS_BODY_TIMEOUT``."""
    import os
    import signal

    from .serve import load_server_settings

    try:
        from .wsgi import app
    except SystemExit as e:
        # cds.wsgi refused to start (its one line is printed): a configuration error or invalid rule
        # files. Respawning would only refuse again, forever: stop the whole server, as gunicorn does
        # on a worker's exit 4, and tell it to exit with this code (cds.serve.main).
        flag = os.environ.get(REFUSED_ENV)
        if flag:
            with open(flag, "w") as f:
                f.write(str(e.code if isinstance(e.code, int) else 1))
        os.kill(os.getppid(), signal.SIGTERM)  # granian's main process spawned this worker
        raise
    settings = load_server_settings()
    return BufferedWSGI(app, settings.threads, app.config.get("MAX_CONTENT_LENGTH"), settings.body_timeout)
