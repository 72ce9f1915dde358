"""Complete a hook request's prefetch by querying the EHR's FHIR server (CDS Hooks 2.0, "Prefetch").

The EHR may send all, some, or none of the prefetch keys a service declares. For every key that is
*absent* this module runs the key's template against ``fhirServer`` with the hook's bearer token; a key
that is present with the value ``null`` means "the EHR has no such data" and is never fetched.

Design choices (documented here because the 412 behaviour depends on them):

* **Concurrency**: independent keys are fetched on worker threads sharing one ``httpx.Client`` per
  destination (scheme, host, port; :func:`_client_for`), each pool limited to
  ``connections_per_host`` connections, so a server that holds its connections (a tarpit) starves only
  itself. This works the same under Flask's dev server and gunicorn sync/threaded workers (no event loop
  to own). A caller may pass its own client (see :func:`make_client`).
* **Time budget**: ``connect_timeout`` (default 0.5 s) bounds each TCP/TLS connect; ``total_timeout``
  (default 2.5 s) bounds the whole call, all keys and pages together (docs/operations.md says why).
  The caller waits for the workers at most until the deadline, then raises :class:`PrefetchUnavailable`
  (HTTP 412) at once, whatever the workers are doing.
  At the deadline the caller is the watchdog: it shuts down the sockets the unfinished workers are
  using, new or reused keep-alive connections alike (each connection's stream tells the fetch job of the
  thread writing a request on it: :class:`_TrackingBackend`), so their blocked reads return at once even
  when the server dribbles its headers a byte at a time, and the workers end. Bodies are also streamed
  with the deadline checked after every read.
* **Counts**: more than ``max_entries`` Bundle entries for one key (one page, or all pages together) is
  a 412 naming the key.
* **Paging**: ``Bundle.link[relation=next]`` is followed and the pages are merged into one searchset
  Bundle. More than ``max_pages`` pages is a 412, not a silent truncation: search results are not
  necessarily ordered by what the rules need (e.g. the most recent condition onset), so deciding on part
  of the data could give a wrong recommendation.
* **Query encoding**: a rendered template's query is split into parameters and handed to httpx, which
  percent-encodes them as RFC 3986 asks (``system|code`` goes out as ``system%7Ccode``; ``,`` as ``%2C``,
  which servers decode back to FHIR's "or" separator). Tomcat (which HAPI FHIR runs on) answers 400 to a
  raw ``|``. ``next`` links are sent as the server wrote them, except that characters RFC 3986 does not
  allow in a query are percent-encoded.
* **Where the token goes**: every URL (the rendered template and each ``next`` link) is checked before it
  is sent: same scheme, host and port as ``fhirServer``, and its path, normalised as a server resolves
  it (``%2E`` is ``.``, then RFC 3986 section 5.2.4 dot-segment removal), equal to the base path or under
  it. HAPI's ``[base]?_getpages=...`` is accepted; ``[base]/../other`` is refused with a 412 and never
  requested. The normalised URL is what is sent, so the check and the request cannot disagree. Paths with
  an encoded ``/`` or ``\\`` are refused (servers differ in how they resolve them).
* **Stale pooled connections**: a GET whose connection breaks before any byte of an answer
  (``RemoteProtocolError``, ``ReadError``, ``WriteError``: what a keep-alive connection closed by the
  server while idle looks like) is retried once, within the budget. Nothing else is retried.
* **Redirects** are not followed (a 3xx is a 412), so the token cannot be forwarded anywhere either.
* **Patient check**: fetched resources whose ``subject``/``patient`` reference is not the context
  patient (or a ``Patient`` whose id differs) are dropped and logged. ``OperationOutcome`` entries of
  fetched Bundles are dropped and logged. Prefetched values are returned exactly as the EHR sent them
  (their validation and filtering belongs to ``cds.extract``).
* **Failures** are logged once each, at WARNING, naming the key, the FHIR server's host and the reason.
  Reasons are classes written here (timed out, could not be reached, HTTP status, response invalid,
  outside fhirServer), never the server's body or headers (no probing oracle).
* **Secrets and PHI**: the token is only ever placed in the request headers. It never appears in
  log records, exception messages, or reprs. Log records name the key and its *template* path, status
  codes and timings, never a patient id or a concrete URL; the ``httpx`` logger's "HTTP Request" lines
  (which carry the full URL) are redacted to scheme and host by a filter installed on import.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpcore
import httpx

from .errors import CdsError
from .templates import TemplateError

logger = logging.getLogger("cds.fhir_client")

__all__ = [
    "FetchSettings",
    "PrefetchUnavailable",
    "complete_prefetch",
    "make_client",
    "render_template",
]

#: Hard cap on one response body; a FHIR server sending more than this for one page is refused.
MAX_BODY_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class FetchSettings:
    """Limits for fetching absent prefetch keys. The defaults are sized for real FHIR servers (searches
    of 0.3-0.7 s are ordinary): see docs/operations.md, "Fetching from fhirServer"."""

    connect_timeout: float = 0.5  # seconds, per TCP/TLS connect (one slow WAN TLS handshake)
    total_timeout: float = 2.5  # seconds, the whole fetch of all keys and pages (and one retry)
    max_pages: int = 10  # searchset pages per key; more is a 412
    max_entries: int = 1000  # Bundle entries per key (each page, and all pages merged); more is a 412
    connections_per_host: int = 4  # pooled connections per (scheme, host, port): a tarpit starves only itself
    allow_http: bool = False  # CDS_ALLOW_HTTP_FHIR=1: plain-http fhirServer (development, tests)


class PrefetchUnavailable(CdsError, LookupError):
    """Required data was neither prefetched nor fetchable: the service answers 412.

    The one class for this failure, whoever finds it: :func:`complete_prefetch` (a key it cannot fetch)
    and :func:`cds.service.evaluate` (a key still absent, e.g. in ``cds evaluate`` or a rule test, which
    never fetch). ``key`` is the first key concerned (None: the prefetch as a whole), ``keys`` every key
    concerned, ``reason`` why. ``str(e)`` names the key(s) and the reason. It never contains the access
    token, a patient id, or a concrete URL (reasons are written by this package, never copied from the
    HTTP layer).
    """

    def __init__(self, key: str | None, reason: str, *, keys: list[str] | None = None) -> None:
        self.key = key
        self.keys: list[str] = list(keys) if keys else ([key] if key is not None else [])
        self.reason = reason
        super().__init__(key, reason)

    def __str__(self) -> str:
        if not self.keys:
            return f"prefetch could not be completed: {self.reason}"
        if len(self.keys) > 1:
            names = ", ".join(f"'{k}'" for k in self.keys)
            return f"prefetch keys {names} could not be fetched: {self.reason}"
        return f"prefetch key '{self.keys[0]}' could not be fetched: {self.reason}"

    def __repr__(self) -> str:
        return f"PrefetchUnavailable(key={self.key!r}, reason={self.reason!r})"


# --------------------------------------------------------------------------------------------------
# Templates

_TOKEN = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\}\}")
# CDS Hooks 2.0 user tokens, derived from context.userId ("Practitioner/123" -> "123").
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


def _encode(value: Any, nested: bool = False) -> str:
    if isinstance(value, (list, tuple)) and value and not nested:
        # FHIR search: a comma-separated list means "any of".
        return ",".join(_encode(v, nested=True) for v in value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = str(value)
        if not text:
            raise TemplateError("value is empty")
        if text in (".", ".."):
            raise TemplateError("value is a dot segment")
        return quote(text, safe="")
    raise TemplateError("value is not a string or number")


def render_template(template: str, context: Mapping[str, Any]) -> str:
    """Fill a prefetch template's ``{{context.x}}`` (and CDS Hooks ``{{userPractitionerId}}``-style)
    tokens from the hook context, URL-encoding each value.

    Raises :class:`cds.templates.TemplateError` (a ``ValueError``) naming the token when the context cannot fill it.
    """

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        try:
            if name.startswith("context."):
                value: Any = context
                for part in name.split(".")[1:]:
                    if not isinstance(value, Mapping) or part not in value:
                        raise TemplateError("not in the context")
                    value = value[part]
                return _encode(value)
            if name in _USER_TOKENS:
                user = context.get("userId")
                prefix = _USER_TOKENS[name] + "/"
                if not isinstance(user, str) or not user.startswith(prefix) or len(user) == len(prefix):
                    raise TemplateError("context.userId is not a " + _USER_TOKENS[name])
                return _encode(user[len(prefix):])
            raise TemplateError("unknown token")
        except TemplateError as exc:
            raise TemplateError(f"template token {{{{{name}}}}} cannot be filled: {exc}") from None

    return _TOKEN.sub(fill, template)


# --------------------------------------------------------------------------------------------------
# httpx plumbing


#: the fetch job the current worker thread runs (:meth:`_Job.run`): the connection streams tell it
#: their socket, so the watchdog can shut it at the deadline
_current = threading.local()


class _TrackedStream(httpcore.NetworkStream):
    """A connection's byte stream that, before each write (a request going out, on a new or a reused
    connection), hands its socket to the fetch job of the writing thread."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        job = getattr(_current, "job", None)
        sock = self._stream.get_extra_info("socket")
        if job is not None and isinstance(sock, socket.socket):
            job.track(sock)
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _TrackedStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _TrackingBackend(httpcore.NetworkBackend):
    """httpcore's synchronous sockets, each connection wrapped in a :class:`_TrackedStream`."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _TrackedStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:  # pragma: no cover - unused
        return _TrackedStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:  # pragma: no cover - httpcore's retries only
        self._backend.sleep(seconds)


class _TrackingTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool of :class:`_TrackingBackend` connections (mounted for
    every URL, so proxies from the environment still take precedence where they apply)."""

    def __init__(self, limits: httpx.Limits) -> None:
        # not super().__init__(): it would build a pool (and an SSL context, ~12 ms) only to be replaced
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_TrackingBackend(),
        )


def _tracked_client(limits: httpx.Limits, **kwargs: Any) -> httpx.Client:
    return httpx.Client(mounts={"all://": _TrackingTransport(limits)}, limits=limits, **kwargs)


def make_client(settings: FetchSettings | None = None) -> httpx.Client:
    """A client suitable for :func:`complete_prefetch`, to keep and reuse across requests."""
    settings = settings or FetchSettings()
    return _tracked_client(
        httpx.Limits(max_connections=32, max_keepalive_connections=8, keepalive_expiry=30.0),
        timeout=httpx.Timeout(settings.total_timeout, connect=settings.connect_timeout),
        follow_redirects=False,
        headers={"User-Agent": "lbp-cds"},
    )


#: A client installed for the whole process (tests: a mock transport), as (pid, client); None: one
#: pooled client per destination (:func:`_client_for`).
_default: tuple[int, httpx.Client] | None = None

#: At most this many destinations keep a pooled client; the least recently used one is closed.
MAX_DESTINATIONS = 64

_clients: OrderedDict[tuple[str, int, str, str, int], httpx.Client] = OrderedDict()
_clients_lock = threading.Lock()


def _client_for(base: _Base, settings: FetchSettings) -> httpx.Client:
    """One pooled client per destination (scheme, host, port) and process (re-made after a fork), made
    lazily, at most :data:`MAX_DESTINATIONS` of them. Each allows ``connections_per_host`` connections,
    so a FHIR server that holds its connections (a tarpit) exhausts only its own pool: calls to other
    servers never wait for it.

    Timeouts are set per request from the call's settings. Creating a client costs an SSL context
    (milliseconds), which is why it is not made per call.
    """
    key = (base.scheme, os.getpid(), base.host, str(settings.connections_per_host), base.port)
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            _clients.move_to_end(key)
            return client
        for stale in [k for k in _clients if k[1] != os.getpid()]:  # inherited over a fork: not ours
            del _clients[stale]
        while len(_clients) >= MAX_DESTINATIONS:
            _, evicted = _clients.popitem(last=False)
            try:
                evicted.close()
            except Exception:  # pragma: no cover - a connection in use elsewhere; it ends by itself
                pass
        client = _tracked_client(
            httpx.Limits(
                max_connections=settings.connections_per_host,
                max_keepalive_connections=settings.connections_per_host,
                keepalive_expiry=30.0,
            ),
            follow_redirects=False,
            headers={"User-Agent": "lbp-cds"},
        )
        _clients[key] = client
        return client


class _RedactHttpxUrls(logging.Filter):
    """httpx logs ``HTTP Request: GET <full URL> ...`` at INFO; the URL carries the patient id.
    Keep the line (useful for operations) but reduce the URL to scheme and host."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 2 and str(record.msg).startswith(
            "HTTP Request:"
        ):
            args = list(record.args)
            try:
                url = httpx.URL(str(args[1]))
                args[1] = f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}/[redacted]"
            except Exception:  # pragma: no cover - defensive: never break logging
                args[1] = "[redacted]"
            record.args = tuple(args)
        return True


def _install_log_redaction() -> None:
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactHttpxUrls) for f in httpx_logger.filters):
        httpx_logger.addFilter(_RedactHttpxUrls())


_install_log_redaction()


# --------------------------------------------------------------------------------------------------
# Fetching


class _Fail(Exception):
    """Internal: a reason for one key (turned into PrefetchUnavailable by the caller)."""


_TOKEN_OK = re.compile(r"^[\x21-\x7e]+$")
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([^/?#]+)(?:/_history/[^/?#]+)?$")


def _check_server(fhir_server: str, allow_http: bool) -> _Base:
    """The usable fhirServer, or raise _Fail."""
    try:
        parts = urlsplit(fhir_server)
        port = parts.port
    except ValueError:
        raise _Fail("fhirServer is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise _Fail("fhirServer is not an absolute https URL")
    if scheme == "http" and not allow_http:
        raise _Fail("fhirServer must use https (plain http is not allowed by this configuration)")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise _Fail("fhirServer must not carry credentials, a query or a fragment")
    path = _normalised_path(parts.path)
    if path is None:
        raise _Fail("fhirServer's path has an encoded '/' or '\\'")
    return _Base(scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], path.rstrip("/"))


_DEFAULT_PORTS = {"https": 443, "http": 80}
_ENCODED_DOT = re.compile(r"%2e", re.IGNORECASE)
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c)", re.IGNORECASE)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4: ``/fhir/a/../../other`` -> ``/other``, ``/fhir/./x`` -> ``/fhir/x``."""
    output: list[str] = []
    rest = path
    while rest:
        if rest.startswith("../"):
            rest = rest[3:]
        elif rest.startswith("./"):
            rest = rest[2:]
        elif rest.startswith("/./"):
            rest = "/" + rest[3:]
        elif rest == "/.":
            rest = "/"
        elif rest.startswith("/../") or rest == "/..":
            rest = "/" + rest[4:]
            if output:
                output.pop()
        elif rest in (".", ".."):
            rest = ""
        else:
            end = rest.find("/", 1 if rest.startswith("/") else 0)
            end = len(rest) if end == -1 else end
            output.append(rest[:end])
            rest = rest[end:]
    return "".join(output)


def _normalised_path(raw_path: str) -> str | None:
    """The path a server resolves ``raw_path`` to: ``%2E`` is ``.`` (RFC 3986 section 6.2.2.2), then
    dot segments are removed. None when the path hides a separator (``%2F``, ``%5C``, ``\\``) that some
    servers decode before resolving: it cannot be checked, so it is refused."""
    if _ENCODED_SEPARATOR.search(raw_path) or "\\" in raw_path:
        return None
    return remove_dot_segments(_ENCODED_DOT.sub(".", raw_path or "/"))


@dataclass(frozen=True)
class _Base:
    """fhirServer as compared: scheme, host, effective port, normalised path without a trailing '/'."""

    scheme: str
    host: str
    port: int
    path: str  # "" when the FHIR server is at the root

    @property
    def display(self) -> str:
        """What logs name: the host (and a port that is not the default), never a path or query."""
        default = _DEFAULT_PORTS.get(self.scheme)
        return self.host if self.port == default else f"{self.host}:{self.port}"

    def target(self, url: str) -> str | None:
        """``url`` rebuilt on its normalised path when it is on this server and its path is the base
        path or lies under it; None otherwise. What is checked is exactly what gets sent."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if scheme != self.scheme or (parts.hostname or "").lower() != self.host:
            return None
        if (port or _DEFAULT_PORTS.get(scheme)) != self.port:
            return None
        if parts.username is not None or parts.password is not None:
            return None
        path = _normalised_path(parts.path)
        if path is None or not (path == self.path or path.startswith(self.path + "/")):
            return None
        netloc = self.host if self.port == _DEFAULT_PORTS[scheme] else f"{self.host}:{self.port}"
        if ":" in self.host:  # an IPv6 literal
            netloc = f"[{self.host}]" if self.port == _DEFAULT_PORTS[scheme] else f"[{self.host}]:{self.port}"
        return f"{scheme}://{netloc}{path}" + (f"?{_strict_query(parts.query)}" if parts.query else "")


_QUERY_DISALLOWED = re.compile(r"%(?![0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]")


def _strict_query(query: str) -> str:
    """Percent-encode what RFC 3986 does not allow in a query (``|``, space, ``"``, ``{``, non-ASCII, a
    ``%`` that starts no escape); escapes and allowed characters are kept, so the server reads the same
    parameters. httpx leaves a raw ``|`` as it is, and strict servers answer 400 to it."""
    return _QUERY_DISALLOWED.sub(lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode("utf-8")), query)


def _host_of(fhir_server: str | None) -> str:
    """The FHIR server's host for a log line (no path, no query: nothing patient-specific)."""
    if not fhir_server:
        return "(no fhirServer)"
    try:
        parts = urlsplit(fhir_server)
        host = parts.hostname or "(invalid fhirServer)"
        port = parts.port
    except ValueError:
        return "(invalid fhirServer)"
    return f"{host}:{port}" if port else host


def _query_params(query: str) -> list[tuple[str, str]]:
    """A rendered template's query as (name, value) pairs, decoded: httpx percent-encodes them again as
    RFC 3986 asks (``|`` -> ``%7C``, ``,`` -> ``%2C``, ``:`` and ``/`` too), which strict servers
    (Tomcat, hence HAPI FHIR) require. Values filled from the context were encoded by
    :func:`render_template`, so a ``&`` or ``=`` in them never splits the query."""
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


class _Job:
    """Fetch one prefetch key: a read or a searchset (with paging)."""

    def __init__(
        self,
        *,
        key: str,
        template: str,
        path: str,
        base: _Base,
        fhir_server: str,
        patient_id: str,
        headers: Mapping[str, str],
        client: httpx.Client,
        settings: FetchSettings,
        deadline: float,
        abandoned: threading.Event,
    ) -> None:
        self.key = key
        self.template_path = template.split("?", 1)[0]  # what we log: no patient id, no query
        self.path = path
        self.base = base
        self.fhir_server = fhir_server
        self.retries = 0  # stale pooled connections retried (at most one per request)
        self.patient_id = patient_id
        self.headers = headers
        self.client = client
        self.settings = settings
        self.deadline = deadline
        self.abandoned = abandoned
        self._sockets: list[socket.socket] = []  # connections this job sends on (the watchdog shuts them)
        self._sockets_lock = threading.Lock()
        resource_path = path.split("?", 1)[0].strip("/")
        segments = [s for s in resource_path.split("/") if s]
        if not segments or not re.fullmatch(r"[A-Z][A-Za-z]+", segments[0]):
            raise _Fail("the template does not name a FHIR resource type")
        self.resource_type = segments[0]
        # "Type/id" is a read; "Type?params" or "Type/_search" is a search.
        self.is_read = "?" not in path and len(segments) == 2 and not segments[1].startswith("_")

    # -- HTTP ------------------------------------------------------------------------------------
    def track(self, sock: socket.socket) -> None:
        """A connection this job is sending a request on (:class:`_TrackedStream`): shut it at the deadline."""
        with self._sockets_lock:
            if sock not in self._sockets:
                self._sockets.append(sock)
        if self.abandoned.is_set():
            self.abort()

    def abort(self) -> None:
        """The watchdog (the caller, at the deadline): shut down the sockets this job opened, so a
        blocked read returns at once whatever the server dribbles, and the worker ends."""
        with self._sockets_lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _open(self, stack: ExitStack, url: str) -> httpx.Response:
        """Send the GET; retry it once if the connection breaks before the first byte of an answer.

        A pooled keep-alive connection that the server closed while it sat idle looks exactly like that
        (``RemoteProtocolError`` "Server disconnected without sending a response", ``ReadError`` on a
        reset, ``WriteError`` when the close arrived first). httpx's own transport retries cover connect
        errors only. A GET is idempotent, so one more attempt (on a new connection: httpx drops the broken
        one) is safe; anything else (a timeout, a status, a break in the middle of a body) is not retried.
        """
        for attempt in (1, 2):
            remaining = self._remaining()
            if remaining <= 0 or self.abandoned.is_set():
                raise _Fail("timed out (fetch time budget exhausted)")
            timeout = httpx.Timeout(
                remaining, connect=min(self.settings.connect_timeout, remaining), pool=remaining
            )
            try:
                return stack.enter_context(
                    self.client.stream(
                        "GET", url, headers=self.headers, timeout=timeout, follow_redirects=False,
                    )
                )
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if attempt == 2:
                    raise
                self.retries += 1
                logger.info(
                    "prefetch key %s: %s: connection closed before an answer (%s); retrying once",
                    self.key, self.template_path, type(exc).__name__,
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def _get_json(self, url: str) -> Any:
        started = time.monotonic()
        try:
            with ExitStack() as stack:
                response = self._open(stack, url)
                status = response.status_code
                if status != 200:
                    logger.debug(
                        "prefetch key %s: %s answered HTTP %d after %.0f ms",
                        self.key, self.template_path, status, (time.monotonic() - started) * 1000,
                    )
                    raise _Fail(self._status_reason(status))
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():  # as received: the deadline is checked per read
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise _Fail("the FHIR server's response is too large")
                    chunks.append(chunk)
                    if self._remaining() <= 0 or self.abandoned.is_set():
                        raise _Fail("timed out (fetch time budget exhausted)")
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                kind = "connecting"
            elif isinstance(exc, httpx.PoolTimeout):
                kind = "waiting for a free connection to the FHIR server"
            else:
                kind = "waiting for the FHIR server"
            raise _Fail(f"timed out {kind}") from None
        except httpx.TransportError as exc:
            if self.abandoned.is_set() or self._remaining() <= 0:  # the watchdog shut the socket
                raise _Fail("timed out (fetch time budget exhausted)") from None
            if isinstance(exc, httpx.ConnectError):
                raise _Fail("the FHIR server could not be reached (connection refused or failed)") from None
            raise _Fail("the FHIR server could not be reached (connection broken)") from None
        except httpx.HTTPError as exc:
            raise _Fail(f"HTTP error ({type(exc).__name__})") from None
        body = b"".join(chunks)
        logger.debug(
            "prefetch key %s: %s HTTP 200, %d bytes in %.0f ms",
            self.key, self.template_path, len(body), (time.monotonic() - started) * 1000,
        )
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _Fail("the FHIR server's response is invalid (not JSON)") from None
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise _Fail("the FHIR server's response is invalid (not a FHIR resource)")
        return data

    @staticmethod
    def _status_reason(status: int) -> str:
        known = {
            401: "the FHIR server refused the access token (HTTP 401)",
            403: "the access token does not allow this query (HTTP 403)",
            404: "the FHIR server does not know this resource or query (HTTP 404)",
            429: "the FHIR server is rate limiting (HTTP 429)",
        }
        if status in known:
            return known[status]
        if 300 <= status < 400:
            return f"the FHIR server redirected (HTTP {status}); redirects are not followed"
        if status >= 500:
            return f"the FHIR server failed (HTTP {status})"
        return f"the FHIR server answered HTTP {status}"

    # -- content checks --------------------------------------------------------------------------
    def _for_patient(self, resource: Mapping[str, Any]) -> bool:
        if resource.get("resourceType") == "Patient":
            return resource.get("id") == self.patient_id
        for field in ("subject", "patient"):
            ref = resource.get(field)
            if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
                m = _PATIENT_REF.search(ref["reference"])
                return m is not None and m.group(1) == self.patient_id
        return True  # not linked to any patient by reference: cds.extract decides

    def _target(self, url: str, what: str) -> str:
        target = self.base.target(url)
        if target is None:
            raise _Fail(f"{what} points outside fhirServer; it was not followed (token not sent)")
        return target

    # -- run -------------------------------------------------------------------------------------
    def run(self) -> Any:
        _current.job = self
        try:
            return self._run()
        finally:  # finished: its connections went back to the pool, they are no longer the job's
            _current.job = None
            with self._sockets_lock:
                self._sockets = []

    def _run(self) -> Any:
        started = time.monotonic()
        path, _, query = self.path.partition("?")
        target = self._target(self.fhir_server.rstrip("/") + "/" + path.lstrip("/"), "the rendered template")
        data = self._get_json(str(httpx.URL(target, params=_query_params(query))))
        if self.is_read:
            result = self._read(data)
        else:
            result = self._search(data)
        logger.info(
            "prefetch key %s: fetched %s in %.0f ms%s", self.key, self.template_path,
            (time.monotonic() - started) * 1000, f" ({self.retries} retried)" if self.retries else "",
        )
        return result

    def _read(self, data: dict[str, Any]) -> Any:
        if data["resourceType"] != self.resource_type:
            raise _Fail(f"the FHIR server's response is invalid (not a {self.resource_type} resource)")
        if not self._for_patient(data):
            raise _Fail("the FHIR server returned a resource that is not for the context patient")
        return data

    def _search(self, data: dict[str, Any]) -> dict[str, Any]:
        entries: list[Any] = []
        dropped_outcomes = dropped_patient = dropped_other = 0
        pages = 0
        seen_urls: set[str] = set()
        while True:
            pages += 1
            if data["resourceType"] != "Bundle" or data.get("type") != "searchset":
                raise _Fail("the FHIR server's response is invalid (not a searchset Bundle)")
            page_entries = data.get("entry", [])
            if not isinstance(page_entries, list):
                raise _Fail("the FHIR server's response is invalid (the Bundle's entry is not a list)")
            cap = self.settings.max_entries
            if len(page_entries) > cap or len(entries) + len(page_entries) > cap:
                raise _Fail(f"the search has more than {cap} entries (the limit per prefetch key)")
            for entry in page_entries:
                resource = entry.get("resource") if isinstance(entry, Mapping) else None
                if not isinstance(resource, Mapping):
                    dropped_other += 1
                    continue
                rtype = resource.get("resourceType")
                mode = entry.get("search", {}).get("mode") if isinstance(entry.get("search"), Mapping) else None
                if rtype == "OperationOutcome" or mode == "outcome":
                    dropped_outcomes += 1
                    continue
                if rtype != self.resource_type and mode != "include":
                    dropped_other += 1
                    continue
                if not self._for_patient(resource):
                    dropped_patient += 1
                    continue
                entries.append(entry)
            next_url = _next_link(data)
            if next_url is None:
                break
            if pages >= self.settings.max_pages:  # deciding on partial data could be wrong
                raise _Fail(f"the search has more than {self.settings.max_pages} pages")
            if next_url in seen_urls:
                raise _Fail("the search's paging 'next' links loop")
            seen_urls.add(next_url)
            data = self._get_json(self._target(next_url, "a paging 'next' link"))
        if dropped_outcomes:
            logger.warning(
                "prefetch key %s: %s dropped %d OperationOutcome entr%s",
                self.key, self.template_path, dropped_outcomes, "y" if dropped_outcomes == 1 else "ies",
            )
        if dropped_patient:
            logger.warning(
                "prefetch key %s: %s dropped %d resource(s) not for the context patient",
                self.key, self.template_path, dropped_patient,
            )
        if dropped_other:
            logger.warning(
                "prefetch key %s: %s dropped %d entr%s without a %s resource",
                self.key, self.template_path, dropped_other, "y" if dropped_other == 1 else "ies",
                self.resource_type,
            )
        logger.debug("prefetch key %s: %d page(s), %d entries kept", self.key, pages, len(entries))
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
        if entries:
            bundle["entry"] = entries
        return bundle


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, Mapping) and link.get("relation") == "next":
            url = link.get("url")
            if isinstance(url, str) and url:
                return url
            raise _Fail("a paging 'next' link has no url")
    return None


def complete_prefetch(
    *,
    templates: Mapping[str, str],
    prefetch: Mapping[str, Any] | None,
    context: Mapping[str, Any],
    patient_id: str,
    fhir_server: str | None,
    access_token: str | None,
    settings: FetchSettings,
    client: httpx.Client | None = None,
) -> dict[str, Any]:
    """Return every template key's value: prefetched ones as sent (``None`` kept: no data), absent ones
    fetched from ``fhir_server`` with the bearer ``access_token``, concurrently.

    Raises :class:`PrefetchUnavailable` (answer 412) naming the first key that could not be fetched.
    Every failure is logged once, at WARNING, with the key, the FHIR server's host and the reason.
    """
    prefetch = prefetch or {}
    result: dict[str, Any] = {}
    missing: list[str] = []
    for key in templates:
        if key in prefetch:
            result[key] = prefetch[key]
        else:
            missing.append(key)
    if not missing:
        return result
    started = time.monotonic()
    try:
        _fetch_missing(
            missing=missing, templates=templates, result=result, context=context, patient_id=patient_id,
            fhir_server=fhir_server, access_token=access_token, settings=settings, client=client,
            deadline=started + settings.total_timeout,
        )
    except PrefetchUnavailable as exc:
        logger.warning(
            "prefetch key %s: fetch from %s failed after %.0f ms: %s",
            exc.key, _host_of(fhir_server), (time.monotonic() - started) * 1000, exc.reason,
            extra={"key": exc.key},
        )
        raise
    logger.info("prefetch: completed in %.0f ms", (time.monotonic() - started) * 1000)
    return {key: result[key] for key in templates}


def _fetch_missing(
    *,
    missing: list[str],
    templates: Mapping[str, str],
    result: dict[str, Any],
    context: Mapping[str, Any],
    patient_id: str,
    fhir_server: str | None,
    access_token: str | None,
    settings: FetchSettings,
    client: httpx.Client | None,
    deadline: float,
) -> None:
    first = missing[0]
    absent = ", ".join(missing)
    if not fhir_server:
        raise PrefetchUnavailable(first, f"absent from the prefetch ({absent}) and the request has no fhirServer")
    if not access_token:
        raise PrefetchUnavailable(
            first, f"absent from the prefetch ({absent}) and the request has no fhirAuthorization access token"
        )
    if not isinstance(access_token, str) or not _TOKEN_OK.match(access_token):
        raise PrefetchUnavailable(first, "the fhirAuthorization access token is not a valid bearer token")
    try:
        base = _check_server(fhir_server, settings.allow_http)
    except _Fail as exc:
        raise PrefetchUnavailable(first, str(exc)) from None

    paths: dict[str, str] = {}
    for key in missing:
        template = templates[key]
        try:
            path = render_template(template, context)
        except TemplateError as exc:
            raise PrefetchUnavailable(key, str(exc)) from None
        if "://" in path.split("?", 1)[0]:
            raise PrefetchUnavailable(key, "the template must be relative to fhirServer")
        paths[key] = path

    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"}
    if client is not None:
        http = client
    elif _default is not None and _default[0] == os.getpid():
        http = _default[1]
    else:
        http = _client_for(base, settings)
    abandoned = threading.Event()
    try:
        jobs: dict[str, _Job] = {}
        for key in missing:
            try:
                jobs[key] = _Job(
                    key=key, template=templates[key], path=paths[key], base=base, fhir_server=fhir_server,
                    patient_id=patient_id, headers=headers, client=http, settings=settings,
                    deadline=deadline, abandoned=abandoned,
                )
            except _Fail as exc:
                raise PrefetchUnavailable(key, str(exc)) from None
        logger.info("prefetch: fetching %d absent key(s) concurrently: %s", len(missing), absent)
        # Even a single key runs on a worker: the caller's wait is what enforces the deadline.
        _run_concurrently(jobs, result, deadline, abandoned)
    finally:
        abandoned.set()


def _run_concurrently(
    jobs: Mapping[str, _Job], result: dict[str, Any], deadline: float, abandoned: threading.Event
) -> None:
    """One worker per key, all sharing the pooled client; the caller waits at most until the deadline.
    The results are the same as fetching the keys one after the other (each key's pages stay in order);
    only the wall time differs (the slowest key instead of the sum)."""
    pool = ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="cds-prefetch")
    futures: dict[Future[Any], str] = {}
    try:
        for key, job in jobs.items():
            futures[pool.submit(job.run)] = key
        pending = set(futures)
        while pending:
            remaining = deadline - time.monotonic()
            done, pending = wait(pending, timeout=max(remaining, 0) + 0.02, return_when=FIRST_EXCEPTION)
            for future in sorted(done, key=lambda f: list(jobs).index(futures[f])):
                key = futures[future]
                exc = future.exception()
                if exc is None:
                    result[key] = future.result()
                elif isinstance(exc, _Fail):
                    raise PrefetchUnavailable(key, str(exc)) from None
                else:
                    raise PrefetchUnavailable(key, f"unexpected error ({type(exc).__name__})") from None
            if pending and time.monotonic() >= deadline:
                key = next(k for k in jobs if any(futures[f] == k for f in pending))
                raise PrefetchUnavailable(key, "timed out (fetch time budget exhausted)")
    finally:
        abandoned.set()
        for job in jobs.values():  # the watchdog: unfinished workers' sockets are shut, so they end now
            job.abort()
        pool.shutdown(wait=False, cancel_futures=True)
