"""A small, real FHIR R4 HTTP server for tests (loopback only, stdlib ``http.server``).

It serves resources by type with the search parameters the service's prefetch templates use
(``patient``, ``code`` as ``system|code`` comma lists, ``_sort=-date``, ``_count``) and ``Type/{id}``
reads, and behaves like the real servers the service meets (HAPI FHIR on Tomcat):

* **strict like Tomcat** (``strict``, on by default): a request target with a character RFC 3986 does not
  allow (a raw ``|``, space, ``"``, ``{``, ``[``, non-ASCII, a ``%`` that starts no escape) is answered
  400 before anything else, as Tomcat does on its default settings;
* **HAPI-style paging** (``paging="hapi"``, the default): ``next`` links are
  ``[base]?_getpages=<id>&_getpagesoffset=N&_count=N&_bundletype=searchset``, on the base path itself,
  served from the stored search; ``paging="offset"`` writes ``[base]/Type?...&_offset=N`` links instead;
* **slow** (``search_delay``: seconds before answering each type-level search, e.g. 0.6);
* **closing idle keep-alive connections** (``idle_timeout``: seconds, e.g. 1.0): the socket is really
  closed, so a client's pooled connection goes stale; ``drop_next`` closes the connection of the next N
  requests without answering (by default only on reused connections: the race a real server's idle close
  causes), to test the one retry. Its data usually comes from the prefetch
Bundles of a hook request file (``fhir_examples/requests/*.json``)::

    with FhirTestServer(FhirData.from_hook_request(path)) as server:
        server.required_token = "secret"
        ... complete_prefetch(fhir_server=server.base_url, access_token="secret", ...)
        assert server.requests  # what it saw

It also takes writes the SMART app makes: ``POST [base]/Observation`` (201 with ``Location``, an id
assigned, stored so later searches find it; a bearer token required; anything but an Observation is
400), with ``fail_posts_after`` (answer 500 once that many creates have succeeded) to test a failed
write midway; and it serves ``[base]/.well-known/smart-configuration`` when ``smart_configuration`` is set
(e.g. from ``tests/smart_auth_server.SmartAuthServer.configuration()``).

Per test it can misbehave: require a bearer token (401 otherwise), answer a given status, sleep
before answering or trickle its body, return garbage or any JSON, mix in resources of another patient,
add an ``OperationOutcome`` entry to searchsets, or write ``next`` links pointing at another base URL.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

try:  # imported as a top-level module by the tests (rootdir tests/ on sys.path), or as tests.*
    from loopback import LoopbackServer
except ImportError:  # pragma: no cover
    from tests.loopback import LoopbackServer

FHIR_JSON = "application/fhir+json; charset=utf-8"

#: what RFC 3986 does not allow in a request target (path and query): Tomcat answers 400 to it
_DISALLOWED = re.compile(r"%(?![0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]")


# --------------------------------------------------------------------------------------------------
# Data


class FhirData:
    """Resources by type and id."""

    def __init__(self, resources: Iterable[Mapping[str, Any]] = ()) -> None:
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self._anon = 0
        for r in resources:
            self.add(r)

    def add(self, resource: Mapping[str, Any]) -> None:
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype in ("Bundle", "OperationOutcome"):
            return
        rid = resource.get("id")
        if not isinstance(rid, str):
            self._anon += 1
            rid = f"anon-{self._anon}"
        self.resources[(rtype, rid)] = copy.deepcopy(dict(resource))

    @classmethod
    def from_prefetch(cls, prefetch: Mapping[str, Any] | None) -> FhirData:
        data = cls()
        for value in (prefetch or {}).values():
            if not isinstance(value, Mapping):
                continue
            if value.get("resourceType") == "Bundle":
                for entry in value.get("entry") or []:
                    if isinstance(entry, Mapping) and isinstance(entry.get("resource"), Mapping):
                        data.add(entry["resource"])
            else:
                data.add(value)
        return data

    @classmethod
    def from_hook_request(cls, path: str | Path) -> FhirData:
        request = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls.from_prefetch(request.get("prefetch"))

    def of_type(self, rtype: str) -> list[dict[str, Any]]:
        return [r for (t, _), r in self.resources.items() if t == rtype]


def _patient_ref(resource: Mapping[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) else None
    for name in ("subject", "patient"):
        ref = resource.get(name)
        if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
            return ref["reference"]
    return None


def _matches_patient(resource: Mapping[str, Any], wanted: str) -> bool:
    ref = _patient_ref(resource)
    if ref is None:
        return False
    wanted = wanted.removeprefix("Patient/")
    return ref == f"Patient/{wanted}" or ref.endswith(f"/Patient/{wanted}")


def _codings(resource: Mapping[str, Any]) -> list[tuple[str | None, str | None]]:
    code = resource.get("code")
    if not isinstance(code, Mapping) or not isinstance(code.get("coding"), list):
        return []
    return [
        (c.get("system"), c.get("code")) for c in code["coding"] if isinstance(c, Mapping)
    ]


def _matches_code(resource: Mapping[str, Any], tokens: list[str]) -> bool:
    codings = _codings(resource)
    for token in tokens:
        if "|" in token:
            system, _, code = token.partition("|")
            system = system or None
            if any((s == system if system else not s) and c == code for s, c in codings):
                return True
        elif any(c == token for _, c in codings):
            return True
    return False


def _date_of(resource: Mapping[str, Any]) -> str:
    for name in ("effectiveDateTime", "onsetDateTime", "recordedDate", "issued", "authoredOn", "date"):
        v = resource.get(name)
        if isinstance(v, str):
            return v
    for name in ("effectivePeriod", "onsetPeriod"):
        v = resource.get(name)
        if isinstance(v, Mapping) and isinstance(v.get("start"), str):
            return v["start"]
    return ""


# --------------------------------------------------------------------------------------------------
# Behaviour


@dataclass
class Override:
    """How to answer requests for one resource type (or ``"*"`` for all)."""

    status: int | None = None  # answer this status with an OperationOutcome body
    delay: float = 0.0  # seconds to sleep before answering
    raw: bytes | None = None  # answer 200 with exactly these bytes (e.g. garbage)
    json_body: Any = None  # answer 200 with this JSON (e.g. not a Bundle)
    trickle: float | None = None  # send the (normal) body one byte per this many seconds
    tarpit: float | None = None  # send the status line and headers one byte per this many seconds, forever
    content_type: str = FHIR_JSON


@dataclass
class SeenRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    accept: str | None
    raw: str = ""  # the request target exactly as received (percent-encoding intact)
    answered: bool = True  # False: refused as malformed (400) or dropped without an answer


@dataclass
class _State:
    overrides: dict[str, Override] = field(default_factory=dict)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client gave up (a 412 within budget): expected in these tests
        super().handle_error(request, client_address)


class FhirTestServer(LoopbackServer):
    """ThreadingHTTPServer on 127.0.0.1 (ephemeral port) in a daemon thread; a context manager."""

    server_class = _QuietServer
    thread_name = "fhir-test-server"

    def __init__(self, data: FhirData | None = None, *, base_path: str = "/fhir") -> None:
        super().__init__()
        self.data = data or FhirData()
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.required_token: str | None = None
        self.overrides: dict[str, Override] = {}
        self.foreign_patient: str | None = None  # also return copies of results re-assigned to this id
        self.operation_outcome = False  # add an OperationOutcome entry to every searchset page
        self.next_base: str | None = None  # base URL for next links (default: this server)
        self.default_count: int | None = None  # page size when the request has no _count
        self.max_count: int | None = None  # cap on _count (servers may page smaller than asked)
        self.strict = True  # 400 on characters RFC 3986 does not allow in the request target (Tomcat)
        self.paging = "hapi"  # "hapi": [base]?_getpages=... next links; "offset": [base]/Type?..&_offset=N
        self.search_delay = 0.0  # seconds before answering each type-level search
        self.getpages_delay = 0.0  # seconds before answering each _getpages page
        self.idle_timeout: float | None = None  # close keep-alive connections idle this long (seconds)
        self.drop_next = 0  # close the connection of the next N requests without answering
        self.drop_reused_only = True  # ... only requests on a reused (keep-alive) connection
        self.connections = 0  # TCP connections accepted
        self.tarpit_closed = 0  # tarpit connections the client shut (the fetch watchdog)
        self.closed_unused = 0  # connections that ended before a request arrived (the client shut them first)
        self.requests: list[SeenRequest] = []
        self.smart_configuration: dict[str, Any] | None = None  # served at [base]/.well-known/smart-configuration
        self.created: list[dict[str, Any]] = []  # resources created by POST, in order, as stored
        self.fail_posts_after: int | None = None  # POSTs answer 500 once this many creates succeeded
        self._next_id = 0
        self._searches: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()  # connections not yet closed

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> FhirTestServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._stop.clear()
        return self.serve(Handler, poll_interval=0.05)

    def stop(self) -> None:
        self._stop.set()  # wakes sleeping handlers
        super().stop()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + self.base_path

    def reset(self) -> None:
        """Forget recorded requests and misbehaviour (keeps the data), and close every open connection,
        as a restart would: a test's settings (``idle_timeout``) then hold for every connection it sees,
        never for a keep-alive connection an earlier test left in the client's pool."""
        self.close_connections()
        with self._lock:
            self.requests.clear()
        self.fail_posts_after = None
        self.required_token = None
        self.overrides = {}
        self.foreign_patient = None
        self.operation_outcome = False
        self.next_base = None
        self.default_count = None
        self.max_count = None
        self.strict = True
        self.paging = "hapi"
        self.search_delay = 0.0
        self.getpages_delay = 0.0
        self.idle_timeout = None
        self.drop_next = 0
        self.drop_reused_only = True

    def close_connections(self) -> None:
        """Shut every open connection (its handler then sees the end of the stream and finishes)."""
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by either side
                pass

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Store a new resource with a server-assigned id (and meta), as a FHIR create does."""
        with self._lock:
            self._next_id += 1
            rid = f"{resource['resourceType'].lower()}-{self._next_id}"
        stored = {**resource, "id": rid, "meta": {"versionId": "1", "lastUpdated": "2026-11-20T12:00:00Z"}}
        self.data.add(stored)
        with self._lock:
            self.created.append(stored)
        return stored

    def record(self, seen: SeenRequest) -> None:
        with self._lock:
            self.requests.append(seen)

    def store_search(self, rtype: str, results: list[dict[str, Any]]) -> str:
        with self._lock:
            search_id = f"s{len(self._searches) + 1:06d}"
            self._searches[search_id] = (rtype, results)
        return search_id

    def stored_search(self, search_id: str) -> tuple[str, list[dict[str, Any]]] | None:
        with self._lock:
            return self._searches.get(search_id)

    def take_drop(self, reused: bool) -> bool:
        with self._lock:
            if self.drop_next > 0 and (reused or not self.drop_reused_only):
                self.drop_next -= 1
                return True
            return False

    def sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # -- FHIR --------------------------------------------------------------------------------------
    def search(self, rtype: str, query: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        results = self.data.of_type(rtype)
        patients = query.get("patient", []) + query.get("subject", [])
        if rtype == "Patient" and "_id" in query:
            ids = {i for v in query["_id"] for i in v.split(",")}
            results = [r for r in results if r.get("id") in ids]
        for value in query.get("code", []):
            tokens = [t for t in value.split(",") if t]
            results = [r for r in results if _matches_code(r, tokens)]
        foreign: list[dict[str, Any]] = []
        for wanted in patients:
            matching = [r for r in results if _matches_patient(r, wanted)]
            if self.foreign_patient:  # a misbehaving server: also another patient's copies of the matches
                for r in matching:
                    if r.get("resourceType") != "Patient":
                        clone = copy.deepcopy(r)
                        clone["id"] = f"{r.get('id', 'x')}-foreign"
                        field_name = "patient" if "patient" in clone and "subject" not in clone else "subject"
                        clone[field_name] = {"reference": f"Patient/{self.foreign_patient}"}
                        foreign.append(clone)
            results = matching
        results = results + foreign
        sort = query.get("_sort", [""])[-1]
        for spec in reversed([s for s in sort.split(",") if s]):
            descending = spec.startswith("-")
            name = spec.lstrip("-")
            if name == "date":
                results.sort(key=_date_of, reverse=descending)
            elif name in ("_id", "id"):
                results.sort(key=lambda r: str(r.get("id", "")), reverse=descending)
        return results


class _Handler(BaseHTTPRequestHandler):
    owner: FhirTestServer
    protocol_version = "HTTP/1.1"
    server_version = "FhirTestServer/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def setup(self) -> None:
        # StreamRequestHandler.setup applies self.timeout to the socket: an idle keep-alive connection
        # then times out in handle_one_request, which closes it (a real close, like a server's idle timer)
        self.timeout = self.owner.idle_timeout
        self.served = 0
        with self.owner._lock:
            self.owner.connections += 1
            self.owner._open.add(self.request)
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._open.discard(self.request)
            if self.served == 0:
                self.owner.closed_unused += 1
        super().finish()

    # -- helpers -----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = FHIR_JSON, trickle: float | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if trickle:
                for i in range(len(body)):
                    if self.owner._stop.is_set():
                        return
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    self.owner.sleep(trickle)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _json(self, status: int, obj: Any, trickle: float | None = None) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), trickle=trickle)

    def _outcome(self, status: int, code: str, text: str) -> None:
        self._json(status, {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}],
        })

    # -- GET ---------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        owner = self.owner
        self.served += 1
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        malformed = owner.strict and _DISALLOWED.search(self.path) is not None
        dropped = not malformed and owner.take_drop(reused=self.served > 1)
        owner.record(SeenRequest(
            "GET", parts.path, query, self.headers.get("Authorization"), self.headers.get("Accept"),
            raw=self.path, answered=not (malformed or dropped),
        ))
        if dropped:  # as if the server had closed this idle connection just as the request came in
            self.close_connection = True
            return
        if malformed:  # Tomcat: "Invalid character found in the request target", HTML, and close
            self.close_connection = True
            return self._send(400, b"<html><body>HTTP Status 400 - Bad Request</body></html>", "text/html")
        path = parts.path
        if owner.base_path:
            if not (path == owner.base_path or path.startswith(owner.base_path + "/")):
                return self._outcome(404, "not-found", "unknown base")
            path = path[len(owner.base_path):]
        segments = [s for s in path.split("/") if s]
        stored = None
        if not segments and "_getpages" in query:  # a HAPI page: [base]?_getpages=<id>&...
            stored = owner.stored_search(query["_getpages"][-1])
            if stored is None:
                return self._outcome(410, "not-found", "search id unknown or expired")
            segments = [stored[0]]
        if not segments:
            return self._outcome(404, "not-found", "no resource type")
        if segments == [".well-known", "smart-configuration"]:
            if owner.smart_configuration is None:
                return self._outcome(404, "not-found", "no SMART configuration")
            return self._send(200, json.dumps(owner.smart_configuration).encode(), "application/json")
        rtype = segments[0]

        override = owner.overrides.get(rtype) or owner.overrides.get("*") or Override()
        if override.delay:
            owner.sleep(override.delay)
            if owner._stop.is_set():
                return
        if override.tarpit:  # a header byte every `tarpit` seconds, never finishing (until stopped)
            self.close_connection = True
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
                self.wfile.flush()
                while not owner._stop.is_set():
                    owner.sleep(override.tarpit)
                    self.wfile.write(b"a")
                    self.wfile.flush()
            except OSError:  # the client shut the connection: what the tests check it does
                with owner._lock:
                    owner.tarpit_closed += 1
            return
        if owner.required_token is not None:
            if self.headers.get("Authorization") != f"Bearer {owner.required_token}":
                return self._outcome(401, "login", "missing or wrong bearer token")
        if override.status is not None:
            return self._outcome(override.status, "exception", f"configured status {override.status}")
        if override.raw is not None:
            return self._send(200, override.raw, override.content_type, override.trickle)
        if override.json_body is not None:
            return self._json(200, override.json_body, override.trickle)

        if len(segments) == 2:
            resource = owner.data.resources.get((rtype, segments[1]))
            if resource is None:
                return self._outcome(404, "not-found", f"{rtype} not found")
            return self._json(200, resource, override.trickle)
        if len(segments) != 1:
            return self._outcome(400, "not-supported", "unsupported path")
        if stored is not None:
            return self._getpages(query, stored, override)
        if owner.search_delay:
            owner.sleep(owner.search_delay)
            if owner._stop.is_set():
                return
        results = owner.search(rtype, query)
        count_values = query.get("_count") or ([str(owner.default_count)] if owner.default_count else [])
        try:
            count = max(1, int(count_values[-1])) if count_values else len(results) or 1
            if owner.max_count is not None:
                count = min(count, owner.max_count)
            offset = max(0, int(query.get("_offset", ["0"])[-1]))
        except ValueError:
            return self._outcome(400, "invalid", "bad _count or _offset")
        self._page(rtype, path, parts.query, results, offset, count, override)

    def _getpages(self, query: Mapping[str, list[str]], stored: tuple[str, list[dict[str, Any]]],
                  override: Override) -> None:
        """HAPI FHIR's paging: the page of a stored search."""
        owner = self.owner
        rtype, results = stored
        if owner.getpages_delay:
            owner.sleep(owner.getpages_delay)
            if owner._stop.is_set():
                return
        try:
            offset = max(0, int(query.get("_getpagesoffset", ["0"])[-1]))
            count = max(1, int(query.get("_count", ["0"])[-1]))
        except ValueError:
            return self._outcome(400, "invalid", "bad _getpagesoffset or _count")
        self._page(rtype, "", urlsplit(self.path).query, results, offset, count, override)

    def _page(self, rtype: str, path: str, raw_query: str, results: list[dict[str, Any]], offset: int,
              count: int, override: Override) -> None:
        owner = self.owner
        query = parse_qs(raw_query, keep_blank_values=True)
        page = results[offset : offset + count]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(results),
            "link": [{"relation": "self", "url": owner.base_url + path + ("?" + raw_query if raw_query else "")}],
            "entry": [
                {"fullUrl": f"{owner.base_url}/{r['resourceType']}/{r.get('id', '')}", "resource": r,
                 "search": {"mode": "match"}}
                for r in page
            ],
        }
        if offset + count < len(results):
            base = owner.next_base or owner.base_url
            if owner.paging == "hapi":
                search_id = query["_getpages"][-1] if "_getpages" in query else owner.store_search(rtype, results)
                next_url = (f"{base}?_getpages={search_id}&_getpagesoffset={offset + count}&_count={count}"
                            "&_bundletype=searchset")
            else:
                next_query = {k: v for k, v in query.items() if k != "_offset"}
                next_query["_offset"] = [str(offset + count)]
                next_query["_count"] = [str(count)]
                next_url = f"{base}/{rtype}?{urlencode(next_query, doseq=True)}"
            bundle["link"].append({"relation": "next", "url": next_url})
        if owner.operation_outcome:
            bundle["entry"].append({
                "resource": {"resourceType": "OperationOutcome", "issue": [
                    {"severity": "warning", "code": "informational", "diagnostics": "test outcome"}]},
                "search": {"mode": "outcome"},
            })
        if not bundle["entry"]:
            del bundle["entry"]
        self._json(200, bundle, override.trickle)

    def do_POST(self) -> None:  # noqa: N802
        """``POST [base]/Observation``: a create (the only write this server takes)."""
        owner = self.owner
        self.served += 1
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        owner.record(SeenRequest("POST", parts.path, parse_qs(parts.query), self.headers.get("Authorization"),
                                 self.headers.get("Accept"), raw=self.path))
        path = parts.path
        if owner.base_path:
            if not path.startswith(owner.base_path + "/"):
                return self._outcome(404, "not-found", "unknown base")
            path = path[len(owner.base_path):]
        if [s for s in path.split("/") if s] != ["Observation"]:
            return self._outcome(405, "not-supported", "this test server creates Observations only")
        authorization = self.headers.get("Authorization") or ""
        if not authorization.startswith("Bearer ") or (
                owner.required_token is not None and authorization != f"Bearer {owner.required_token}"):
            return self._outcome(401, "login", "missing or wrong bearer token")
        try:
            resource = json.loads(raw)
        except ValueError:
            return self._outcome(400, "invalid", "body is not JSON")
        if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
            return self._outcome(400, "invalid", "body is not an Observation")
        if owner.fail_posts_after is not None and len(owner.created) >= owner.fail_posts_after:
            return self._outcome(500, "exception", "configured failure")
        stored = owner.create(resource)
        body = json.dumps(stored).encode("utf-8")
        self.send_response(201)
        self.send_header("Content-Type", FHIR_JSON)
        self.send_header("Location", f"{owner.base_url}/Observation/{stored['id']}/_history/1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
