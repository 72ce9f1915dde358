"""The SMART on FHIR app at /app/: history, recommendation, record a session, demo (issue 14, README "SMART app").

SMART App Launch 2 (EHR launch with ``iss`` and ``launch``; standalone launch with ``iss`` alone):
``/app/launch`` discovers ``{iss}/.well-known/smart-configuration`` and redirects to its
``authorization_endpoint`` (Authlib's OAuth2 client: PKCE S256, a public client unless
``CDS_APP_CLIENT_SECRET`` is set); ``/app/callback`` exchanges the code at the ``token_endpoint``
and keeps the access token, patient, expiry and ``appContext`` in an encrypted cookie (Fernet, key
from ``CDS_APP_SECRET``; in development a key per process). Only FHIR bases on ``CDS_APP_FHIR_SERVERS``
may be launched against: a launch sends the user's token there.

``/app/`` reads the patient's data with the user's token through the service's prefetch templates
(:func:`cds.fhir_client.complete_prefetch`), draws the history (:mod:`cds.history_chart`) and shows
the recommendation of the same rules (:func:`cds.service.evaluate`, explained by :func:`cds.explain.explain`).
``/app/record`` validates the form (:mod:`cds.session_record`), creates the Observations (rounds
first, then the pain scores ``derivedFrom`` them) and re-reads the data for the refreshed recommendation.
``/app/?demo=<example>`` shows a bundled example (no FHIR server, nothing written).

The token never reaches logs, HTML, URLs or error pages; every page carries a CSP without inline
script, ``frame-ancestors`` from ``CDS_APP_FRAME_ANCESTORS`` (EHRs embed SMART apps in iframes),
``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError

with warnings.catch_warnings():  # Authlib 1.7+ points at its httpx2 client; the httpx one is what we use
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client
from cryptography.fernet import Fernet, InvalidToken
from flask import Blueprint, current_app, make_response, redirect, render_template, request
from markdown_it import MarkdownIt
from markupsafe import Markup
from werkzeug.wrappers import Response

from .. import history_chart, service, session_record
from ..active_rules import ActiveRules
from ..errors import CdsError
from ..explain import explain
from ..extract import PrefetchShapeError, PrefetchTooLarge
from ..fhir_client import PrefetchUnavailable, complete_prefetch
from ..templates import APP_TEXT_PLACEHOLDERS, derived_parameters, fill, render_number

log = logging.getLogger("cds.app")

bp = Blueprint("smart_app", __name__, url_prefix="/app", template_folder="templates",
               static_folder="static/app", static_url_path="/static")

EHR_SCOPE = "launch patient/Observation.rs patient/Observation.c patient/Condition.rs"
STANDALONE_SCOPE = "launch/patient patient/Observation.rs patient/Observation.c patient/Condition.rs"
COOKIE = "lbp_app"
PENDING_SECONDS = 600  # an authorization must come back within 10 minutes
SESSION_SECONDS = 8 * 3600  # the cookie's upper bound; the token's expires_in usually ends it first
HTTP_TIMEOUT = 5.0
_EXAMPLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SHA = re.compile(r"[0-9a-f]{64}")
_md = MarkdownIt("commonmark", {"html": False}).enable("table")


class AppError(CdsError):
    """An app page error: the status and a message for the user (never a token or internal answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class AppState:
    fernet: Fernet
    secure_cookie: bool
    examples_dir: Path
    #: the app is framed by another site (an EHR's iframe): the session cookie is then a third-party one,
    #: which browsers send only when it is ``SameSite=None; Secure``, kept per embedding site (``Partitioned``)
    embedded: bool = False


def init_app(app: Any) -> None:
    """Register the app's blueprint when ``CDS_APP`` is on (one line in :func:`cds.http.app.create_app`)."""
    settings = app.extensions["lbp_cds"].settings
    if not settings.app:
        return
    # without CDS_APP_SECRET (development only: cds.config refuses it elsewhere) a key per process
    secret = settings.app_secret or secrets.token_urlsafe(32)
    key = base64.urlsafe_b64encode(hashlib.sha256(b"lbp-cds app session\0" + secret.encode()).digest())
    app.extensions["lbp_cds_app"] = AppState(
        fernet=Fernet(key),
        secure_cookie=settings.public_base_url.startswith("https://"),
        examples_dir=settings.app_demo_dir,
        embedded=settings.app_embedded_by_other_sites,
    )
    app.register_blueprint(bp)


def _state():
    return current_app.extensions["lbp_cds"]


def _app_state() -> AppState:
    return current_app.extensions["lbp_cds_app"]


# -- the encrypted session cookie -------------------------------------------------------------------

def _load_cookie() -> dict[str, Any]:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return {}
    try:
        data = json.loads(_app_state().fernet.decrypt(raw.encode(), ttl=SESSION_SECONDS))
    except (InvalidToken, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_cookie(response: Response, data: dict[str, Any]) -> Response:
    state = _app_state()
    token = state.fernet.encrypt(json.dumps(data, separators=(",", ":")).encode()).decode()
    # Inside an EHR's iframe (embedded) every request is cross-site: a Lax cookie would never come back,
    # and the launch would fail at its callback. Forms still carry their CSRF token (``record``), and the
    # callback its OAuth ``state``; Partitioned keeps the cookie to the site that embeds the app.
    embedded = state.embedded
    response.set_cookie(COOKIE, token, max_age=SESSION_SECONDS, httponly=True, path="/app",
                        samesite="None" if embedded else "Lax", secure=embedded or state.secure_cookie,
                        partitioned=embedded)
    return response


def _launched(data: dict[str, Any]) -> dict[str, Any] | None:
    """The launched session, or None when there is none or its token has expired."""
    s = data.get("session")
    if not isinstance(s, dict) or not s.get("token") or not s.get("patient"):
        return None
    if float(s.get("exp", 0)) <= time.time():
        return None
    return s


# -- headers and errors -------------------------------------------------------------------------

@bp.after_request
def _security_headers(response: Response) -> Response:
    ancestors = " ".join(_state().settings.app_frame_ancestors) or "'none'"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
        f"frame-ancestors {ancestors}"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(AppError)
def _app_error(e: AppError):
    return render_template("app/error.html", status=e.status, message=e.message, title=_title()), e.status


def _title() -> str:
    app = _state().rules.current().ruleset.document.app
    return app.title if app is not None else "lbp-cds"


# -- launch -------------------------------------------------------------------------------------

def _allowed_iss(iss: str) -> str:
    settings = _state().settings
    base = iss.strip().rstrip("/")
    if not base or base not in settings.app_fhir_servers:
        raise AppError(400, "iss: this FHIR server is not one the app may be launched from "
                            "(CDS_APP_FHIR_SERVERS)")
    return base


def _check_url(url: Any, what: str) -> str:
    allow_http = _state().settings.allow_http_fhir
    if not isinstance(url, str) or not url.startswith("https://" if not allow_http else ("https://", "http://")):
        raise AppError(502, f"the FHIR server's SMART configuration has no usable {what}")
    return url


def _redirect_uri() -> str:
    return _state().settings.public_base_url + "/app/callback"


def _oauth_client(scope: str | None = None) -> OAuth2Client:
    settings = _state().settings
    secret = settings.app_client_secret or None
    return OAuth2Client(
        client_id=settings.app_client_id, client_secret=secret, scope=scope, redirect_uri=_redirect_uri(),
        code_challenge_method="S256", token_endpoint_auth_method="client_secret_basic" if secret else "none",
        timeout=HTTP_TIMEOUT, follow_redirects=False,
    )


@bp.get("/launch")
def launch():
    iss = request.args.get("iss")
    if not iss:
        raise AppError(400, "iss: missing (open the app from your EHR, or give the FHIR server as ?iss=)")
    base = _allowed_iss(iss)
    launch_token = request.args.get("launch")
    try:
        answer = httpx.get(base + "/.well-known/smart-configuration", timeout=HTTP_TIMEOUT,
                           headers={"Accept": "application/json"}, follow_redirects=False)
        answer.raise_for_status()
        config = answer.json()
    except (httpx.HTTPError, ValueError):
        log.warning("app launch: SMART configuration of %s unavailable", urlsplit(base).hostname)
        raise AppError(502, "the FHIR server's SMART configuration could not be read") from None
    if not isinstance(config, dict):
        raise AppError(502, "the FHIR server's SMART configuration is not a JSON object")
    authorize = _check_url(config.get("authorization_endpoint"), "authorization_endpoint")
    token_endpoint = _check_url(config.get("token_endpoint"), "token_endpoint")
    scope = EHR_SCOPE if launch_token else STANDALONE_SCOPE
    verifier = generate_token(64)
    state = secrets.token_urlsafe(24)
    extra: dict[str, str] = {"aud": base}
    if launch_token:
        extra["launch"] = launch_token
    with _oauth_client(scope) as client:
        url, _ = client.create_authorization_url(authorize, state=state, code_verifier=verifier, **extra)
    data = _load_cookie()
    data["pending"] = {"state": state, "verifier": verifier, "iss": base, "token_endpoint": token_endpoint,
                       "at": time.time()}
    log.info("app launch: %s launch, redirecting to the authorization server of %s",
             "EHR" if launch_token else "standalone", urlsplit(base).hostname)
    return _save_cookie(redirect(url, 302), data)


def _app_context(raw: Any) -> dict[str, Any] | None:
    """The card's ``appContext`` (``{"rung": ..., "ruleSetSha256": ...}``), kept only when well formed."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    rung = raw.get("rung")
    if isinstance(rung, (str, int)) and not isinstance(rung, bool) and len(str(rung)) <= 64:
        out["rung"] = rung
    sha = raw.get("ruleSetSha256")
    if isinstance(sha, str) and _SHA.fullmatch(sha):
        out["ruleSetSha256"] = sha
    return out or None


@bp.get("/callback")
def callback():
    data = _load_cookie()
    pending = data.pop("pending", None)
    state = request.args.get("state", "")
    if (not isinstance(pending, dict) or not state or not hmac.compare_digest(str(pending.get("state")), state)
            or time.time() - float(pending.get("at", 0)) > PENDING_SECONDS):
        raise AppError(400, "state: this authorization answer does not belong to a launch of this browser "
                            "(wrong or expired state); launch the app again")
    if request.args.get("error"):
        raise AppError(403, "the authorization was refused; launch the app again")
    code = request.args.get("code")
    if not code:
        raise AppError(400, "code: missing from the authorization answer")
    try:
        with _oauth_client() as client:
            token = client.fetch_token(pending["token_endpoint"], code=code, code_verifier=pending["verifier"])
    except (OAuthError, httpx.HTTPError, ValueError, KeyError) as e:
        log.warning("app callback: token exchange failed (%s)", type(e).__name__)
        raise AppError(502, "the authorization server did not give an access token; launch the app again") from None
    access_token, patient = token.get("access_token"), token.get("patient")
    if not isinstance(access_token, str) or not access_token:
        raise AppError(502, "the authorization server's answer has no access_token")
    if not isinstance(patient, str) or not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", patient):
        raise AppError(400, "patient: the launch did not select a patient")
    try:
        expires_in = float(token["expires_in"]) if token.get("expires_in") is not None else 3600.0
    except (TypeError, ValueError):
        expires_in = 3600.0
    data["session"] = {
        "token": access_token, "patient": patient, "iss": pending["iss"],
        "exp": time.time() + min(max(expires_in, 0), SESSION_SECONDS),
        "scope": str(token.get("scope") or ""), "app_context": _app_context(token.get("appContext")),
    }
    data["csrf"] = secrets.token_urlsafe(24)
    log.info("app callback: launched against %s", urlsplit(pending["iss"]).hostname)
    return _save_cookie(redirect("/app/", 302), data)


# -- the page -------------------------------------------------------------------------------------

@dataclass
class _View:
    """What the page template shows."""

    active: ActiveRules
    prefetch: dict[str, Any] | None  # None: the data could not be read (after a failed write)
    patient_id: str
    demo: str | None = None
    csrf: str = ""
    app_context: dict[str, Any] | None = None
    form: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    rounds: int = 0
    written: list[dict[str, str]] | None = None
    write_error: dict[str, list[dict[str, str]]] | None = None


def _params(active: ActiveRules) -> dict[str, str]:
    """The parameters (and the derived ones) as the texts show them."""
    parameters = active.ruleset.document.parameters
    return {k: render_number(v) for k, v in {**parameters, **derived_parameters(parameters)}.items()}


def _texts(active: ActiveRules):
    app = active.ruleset.document.app
    if app is None:
        raise AppError(503, "the rule set has no app section (rules/smart-app.yaml, the app's wording): the app is not available "
                            "with this rule set")
    return app


def _fetch(active: ActiveRules, s: dict[str, Any]) -> dict[str, Any]:
    state = _state()
    try:
        return complete_prefetch(
            templates=service.prefetch_templates(active.ruleset), prefetch=None,
            context={"patientId": s["patient"]}, patient_id=s["patient"], fhir_server=s["iss"],
            access_token=s["token"], settings=state.fetch_settings,
        )
    except PrefetchUnavailable:  # logged by the fetcher (key, host, reason; never the token)
        raise AppError(502, "the patient's data could not be read from the FHIR server; try again") from None


def _render(view: _View, status: int = 200):
    active = view.active
    app = _texts(active)
    ruleset = active.ruleset
    doc = ruleset.document
    params = _params(active)
    state = _state()
    cards: list[dict[str, Any]] | None = None
    chart = history = None
    current = doc.ladder.codes[0]
    if view.prefetch is not None:
        try:
            outcome = service.evaluate(active, view.prefetch, patient_id=view.patient_id, clock=state.clock,
                                       max_entries_per_key=state.fetch_settings.max_entries)
            history = history_chart.sessions(outcome.facts, ruleset)
        except (PrefetchShapeError, PrefetchTooLarge):
            raise AppError(502, "the patient's data from the FHIR server is not usable FHIR") from None
        report = explain(outcome, active)
        # each card beside the rule that gave it (the explanation pairs them; a silent rule gives none)
        cards = []
        for fired in report["fired"]:
            if fired["card"] is None:
                continue
            card = report["cards"][fired["card"]]
            cards.append({"summary": card["summary"], "indicator": card["indicator"],
                          "detail": Markup(_md.render(card.get("detail", ""))), "fired": fired})
        chart = Markup(history_chart.render_svg(history, ruleset))
        if outcome.facts.latest_session is not None:
            current = outcome.facts.latest_session.exercise
    rungs = {r.code: r.display for r in doc.ladder.rungs}
    opened_from = ruleset_differs = None
    if view.app_context:
        rung = view.app_context.get("rung")
        name = None
        if isinstance(rung, int) and 0 <= rung < len(doc.ladder.rungs):
            name = doc.ladder.rungs[rung].display
        elif isinstance(rung, str):
            name = rungs.get(rung) or (doc.ladder.rungs[int(rung)].display
                                       if rung.isdigit() and int(rung) < len(doc.ladder.rungs) else None)
        if name:
            opened_from = fill(app.opened_from, {**params, "exercise": name})
        sha = view.app_context.get("ruleSetSha256")
        if sha and sha != ruleset.identity.sha256:
            ruleset_differs = fill(app.ruleset_differs, {**params, "card_sha256": sha[:12],
                                                         "active_sha256": ruleset.identity.sha256[:12]})
    rounds = view.rounds or session_record.round_count(view.form, ruleset)
    form = {"exercise": current, "date": state.clock.today().isoformat(), **view.form}
    own = {path[0] for path in APP_TEXT_PLACEHOLDERS if len(path) == 1}  # filled where they are used
    t = {k: fill(v, params) if isinstance(v, str) and k not in own else v for k, v in app.model_dump().items()}
    return render_template(
        "app/page.html",
        title=app.title, t=t, app=app, chart=chart, history=history, rungs=rungs, ladder=doc.ladder.rungs, cards=cards,
        demo=view.demo, demo_banner=fill(app.demo_banner, {**params, "example": view.demo}) if view.demo else None,
        csrf=view.csrf, form=form, errors=view.errors,
        round_labels=[fill(app.round_label, {**params, "n": str(n)}) for n in range(1, rounds + 1)],
        can_add_round=rounds < session_record.max_rounds(ruleset), max_reps=session_record.max_reps(ruleset),
        today=state.clock.today().isoformat(), written=view.written, write_error=view.write_error,
        opened_from=opened_from, ruleset_differs=ruleset_differs, render_number=render_number,
        ruleset=ruleset.identity,
    ), status


def _examples() -> dict[str, Path]:
    folder = _app_state().examples_dir
    try:
        return {p.stem: p for p in sorted(folder.glob("*.json")) if p.is_file()}
    except OSError:
        return {}


def _demo_view(active: ActiveRules, name: str) -> _View:
    if not _state().settings.app_demo:
        raise AppError(404, "demo mode is off (CDS_APP_DEMO)")
    path = _examples().get(name) if _EXAMPLE.fullmatch(name) else None
    if path is None:
        raise AppError(404, f"demo: no bundled example named '{name[:100]}'")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        patient_id = body["context"]["patientId"]
        prefetch = dict(body.get("prefetch") or {})
    except (OSError, ValueError, KeyError, TypeError):
        raise AppError(500, f"demo: the example '{name}' is not a readable hook request") from None
    for key in service.prefetch_templates(active.ruleset):
        prefetch.setdefault(key, None)
    return _View(active=active, prefetch=prefetch, patient_id=str(patient_id), demo=name)


@bp.get("/")
def page():
    active = _state().rules.current()
    _texts(active)
    demo = request.args.get("demo")
    if demo is not None:
        return _render(_demo_view(active, demo))
    data = _load_cookie()
    s = _launched(data)
    if s is None:
        raise AppError(401, "not launched: open the app from your EHR (or see the demo at /app/demo)")
    return _render(_View(active=active, prefetch=_fetch(active, s), patient_id=s["patient"],
                         csrf=str(data.get("csrf", "")), app_context=s.get("app_context")))


@bp.get("/demo")
def demo_list():
    if not _state().settings.app_demo:
        raise AppError(404, "demo mode is off (CDS_APP_DEMO)")
    return render_template("app/demo.html", title=_title(), examples=list(_examples()))


# -- record a session ---------------------------------------------------------------------------

def _resource_id(answer: httpx.Response) -> str | None:
    try:
        body = answer.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("id"), str) and body["id"]:
        return body["id"]
    location = answer.headers.get("Location", "")
    parts = [p for p in urlsplit(location).path.split("/") if p]
    if "Observation" in parts and parts.index("Observation") + 1 < len(parts):
        return parts[parts.index("Observation") + 1]
    return None


def _describe(resource: dict[str, Any], active: ActiveRules) -> dict[str, str]:
    """What the written list shows for one Observation: its code and value (no patient id)."""
    coding = resource["code"]["coding"][0]
    value = resource.get("valueQuantity", {}).get("value", resource.get("valueInteger"))
    code = coding.get("display") or coding["code"]
    for comp in resource.get("component", []):
        if comp["code"]["coding"][0]["code"] == active.ruleset.document.codes.round_component.code:
            code = f"{code} ({comp['valueInteger']})"
    return {"code": code, "value": render_number(value)}


@bp.post("/record")
def record():
    active = _state().rules.current()
    _texts(active)
    data = _load_cookie()
    s = _launched(data)
    if s is None:
        raise AppError(401, "not launched (or the session has expired): launch the app again; nothing was written")
    sent = request.form.get("csrf_token", "")
    if not sent or not hmac.compare_digest(sent, str(data.get("csrf", ""))):
        raise AppError(403, "csrf_token: the form does not belong to this session; reload the page (nothing was written)")
    form = {k: v for k, v in request.form.items() if k != "csrf_token" and k != "action" and len(v) <= 100}
    view = _View(active=active, prefetch={}, patient_id=s["patient"], csrf=str(data["csrf"]),
                 app_context=s.get("app_context"), form=form)
    ruleset = active.ruleset
    if request.form.get("action") == "add-round":
        view.rounds = min(session_record.round_count(form, ruleset) + 1, session_record.max_rounds(ruleset))
        view.prefetch = _fetch(active, s)
        return _render(view)
    try:
        session = session_record.parse_form(form, ruleset, _state().clock.today())
    except session_record.FormErrors as e:
        view.errors = e.errors
        view.prefetch = _fetch(active, s)
        return _render(view, 400)
    rounds = session_record.round_observations(session, ruleset, s["patient"])
    written: list[dict[str, str]] = []
    pending: list[dict[str, Any]] = list(rounds)
    headers = {"Authorization": f"Bearer {s['token']}", "Content-Type": "application/fhir+json",
               "Accept": "application/fhir+json"}
    failed = False
    with httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=False) as http:
        def create(resource: dict[str, Any]) -> bool:
            try:
                answer = http.post(s["iss"] + "/Observation", content=json.dumps(resource), headers=headers)
            except httpx.HTTPError as e:
                log.warning("app record: creating an Observation failed (%s)", type(e).__name__)
                return False
            rid = _resource_id(answer) if answer.status_code in (200, 201) else None
            if rid is None:
                log.warning("app record: creating an Observation failed (HTTP %s)", answer.status_code)
                return False
            written.append({"ref": f"Observation/{rid}", **_describe(resource, active)})
            return True

        for resource in rounds:
            if not create(resource):
                failed = True
                break
            pending.pop(0)
        pains = session_record.pain_observations(session, ruleset, s["patient"], [w["ref"] for w in written])
        if failed:
            pending += pains
        else:
            pending = list(pains)
            for resource in pains:
                if not create(resource):
                    failed = True
                    break
                pending.pop(0)
    log.info("app record: %d Observation(s) created, %d not", len(written), len(pending) if failed else 0)
    # a new CSRF token after every write: the same form sent again (a reload) is refused, never written twice
    data["csrf"] = view.csrf = secrets.token_urlsafe(24)
    if failed:
        view.write_error = {"written": written, "not_written": [_describe(r, active) for r in pending]}
    else:
        view.written = written
        view.form = {}
    try:
        view.prefetch = _fetch(active, s)  # the refreshed recommendation decides from what was just written
    except AppError:
        view.prefetch = None  # no recommendation rather than one from no data
    return _save_cookie(make_response(_render(view, 502 if failed else 200)), data)
