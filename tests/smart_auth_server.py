"""A small, real SMART on FHIR authorization server for tests (loopback only, stdlib ``http.server``).

What an EHR's authorization server does for SMART App Launch 2, strictly enough to catch a client that
gets it wrong:

* ``GET /authorize``: checks ``response_type=code``, the registered ``client_id`` and ``redirect_uri``,
  ``aud`` (the FHIR base), ``state``, ``code_challenge`` with ``code_challenge_method=S256``, the scope
  (``launch`` with a known ``launch`` token for an EHR launch, ``launch/patient`` for a standalone
  one), then approves at once and redirects to ``redirect_uri?code=..&state=..``. With
  ``approve_page = True`` it first shows an HTML page with an "Allow" button (``POST /authorize``),
  for browser tests.
* ``POST /token``: ``grant_type=authorization_code``, a code used once, the same ``redirect_uri`` and
  ``client_id`` (or HTTP Basic for a confidential client), and the PKCE ``code_verifier`` whose S256
  hash must equal the challenge; answers ``access_token``, ``token_type``, ``expires_in``, ``scope``,
  ``patient`` and, when the launch had one, ``appContext`` (a JSON string, as SMART says).

``configuration()`` is the ``.well-known/smart-configuration`` document to serve at the FHIR base
(``FhirTestServer.smart_configuration``)::

    with SmartAuthServer(client_id="lbp-cds-app", redirect_uri=..., access_token="tok") as auth:
        fhir.smart_configuration = auth.configuration()
        launch = auth.new_launch("123", app_context={"rung": "bird-dog"})
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

try:  # imported as a top-level module by the tests (rootdir tests/ on sys.path), or as tests.*
    from loopback import LoopbackServer
except ImportError:  # pragma: no cover
    from tests.loopback import LoopbackServer


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge of a verifier (RFC 7636 §4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


@dataclass
class Grant:
    """One authorization code and what it was issued for."""

    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    patient: str
    app_context: dict[str, Any] | None = None
    used: bool = False


@dataclass
class Seen:
    method: str
    path: str
    params: dict[str, str]
    authorization: str | None = None


@dataclass
class _Launch:
    patient: str
    app_context: dict[str, Any] | None = None


class SmartAuthServer(LoopbackServer):
    thread_name = "smart-auth-server"

    def __init__(self, *, client_id: str, redirect_uri: str, access_token: str | None = None,
                 client_secret: str | None = None, fhir_base: str | None = None,
                 standalone_patient: str = "123", expires_in: int = 3600) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.fhir_base = fhir_base  # when set, aud must equal it
        self.access_token = access_token or secrets.token_urlsafe(24)
        self.standalone_patient = standalone_patient
        self.expires_in = expires_in
        self.approve_page = False
        self.launches: dict[str, _Launch] = {}
        self.grants: dict[str, Grant] = {}
        self.requests: list[Seen] = []
        self.token_errors: list[str] = []  # why each refused token request was refused
        self._lock = threading.Lock()
        self.extra: dict[str, Any] = {}  # extra token response fields

    def start(self) -> SmartAuthServer:
        server = self

        class Handler(_Handler):
            owner = server

        return self.serve(Handler, poll_interval=0.05)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configuration(self) -> dict[str, Any]:
        """The ``.well-known/smart-configuration`` of the FHIR server this authorizes for."""
        return {
            "authorization_endpoint": self.origin + "/authorize",
            "token_endpoint": self.origin + "/token",
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["launch", "launch/patient", "patient/Observation.rs", "patient/Observation.c",
                                 "patient/Condition.rs"],
            "response_types_supported": ["code"],
            "capabilities": ["launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
                             "context-ehr-patient", "context-standalone-patient", "permission-v2"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
        }

    def new_launch(self, patient: str, app_context: dict[str, Any] | None = None) -> str:
        """An EHR launch token for this patient (and the card's appContext)."""
        token = secrets.token_urlsafe(12)
        self.launches[token] = _Launch(patient, app_context)
        return token

    # -- the two endpoints' logic --------------------------------------------------------------------
    def authorize(self, q: dict[str, str]) -> tuple[int, str]:
        """(status, redirect URL or error text) for an authorization request."""
        if q.get("response_type") != "code":
            return 400, "response_type must be code"
        if q.get("client_id") != self.client_id:
            return 400, "unknown client_id"
        if q.get("redirect_uri") != self.redirect_uri:
            return 400, "redirect_uri is not the registered one"
        if not q.get("state"):
            return 400, "state missing"
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return 400, "PKCE S256 required"
        if not q.get("aud") or (self.fhir_base is not None and q["aud"] != self.fhir_base):
            return 400, "aud must be the FHIR base URL"
        scopes = set((q.get("scope") or "").split())
        if "launch" in scopes:
            launch = self.launches.get(q.get("launch", ""))
            if launch is None:
                return 400, "unknown launch"
        elif "launch/patient" in scopes:
            launch = _Launch(self.standalone_patient, None)
        else:
            return 400, "scope needs launch or launch/patient"
        code = secrets.token_urlsafe(16)
        with self._lock:
            self.grants[code] = Grant(self.client_id, q["redirect_uri"], q["code_challenge"], q["scope"],
                                      launch.patient, launch.app_context)
        return 302, q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})

    def token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        def refuse(error: str, why: str) -> tuple[int, dict[str, Any]]:
            self.token_errors.append(why)
            return 400, {"error": error, "error_description": why}

        if form.get("grant_type") != "authorization_code":
            return refuse("unsupported_grant_type", "grant_type must be authorization_code")
        client_id = form.get("client_id")
        if self.client_secret is not None:
            expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
            if authorization != expected:
                return 401, {"error": "invalid_client"}
            client_id = self.client_id
        if client_id != self.client_id:
            return refuse("invalid_client", "client_id missing or wrong")
        with self._lock:
            grant = self.grants.get(form.get("code", ""))
            if grant is None or grant.used:
                return refuse("invalid_grant", "unknown or used code")
            grant.used = True
        if form.get("redirect_uri") != grant.redirect_uri:
            return refuse("invalid_grant", "redirect_uri differs from the authorization request's")
        verifier = form.get("code_verifier")
        if not verifier or s256(verifier) != grant.challenge:
            return refuse("invalid_grant", "PKCE code_verifier does not match the code_challenge")
        body: dict[str, Any] = {
            "access_token": self.access_token, "token_type": "Bearer", "expires_in": self.expires_in,
            "scope": grant.scope, "patient": grant.patient, **self.extra,
        }
        if grant.app_context is not None:
            body["appContext"] = json.dumps(grant.app_context)
        return 200, body


class _Handler(BaseHTTPRequestHandler):
    owner: SmartAuthServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def _authorize(self, q: dict[str, str]) -> None:
        status, target = self.owner.authorize(q)
        if status == 302:
            self._send(302, b"", "text/plain", {"Location": target})
        else:
            self._send(status, target.encode(), "text/plain; charset=utf-8")

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.owner.requests.append(Seen("GET", parts.path, q, self.headers.get("Authorization")))
        if parts.path != "/authorize":
            return self._send(404, b"not found", "text/plain")
        if not self.owner.approve_page:
            return self._authorize(q)
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in q.items())
        page = (f'<!doctype html><html lang="en"><head><title>Authorize</title></head><body><main>'
                f'<h1>Allow the app to use your data?</h1><form method="post" action="/authorize">{hidden}'
                f'<button type="submit" id="allow">Allow</button></form></main></body></html>')
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def do_POST(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        form = self._form()
        self.owner.requests.append(Seen("POST", parts.path, form, self.headers.get("Authorization")))
        if parts.path == "/authorize":
            return self._authorize(form)
        if parts.path != "/token":
            return self._send(404, b"not found", "text/plain")
        status, body = self.owner.token(form, self.headers.get("Authorization"))
        self._send(status, json.dumps(body).encode(), "application/json")
