"""JWT bearer authentication of the EHR (CDS Hooks 2.0) and CORS for browser-based clients."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, current_app, g, request
from flask_cors import CORS

from ..auth import AuthenticationError, AuthUnavailable, InMemoryJtiStore, JtiStore, JwtVerifier, load_trusted_issuers
from ..config import ConfigError, Settings
from .errors import error_body

log = logging.getLogger("cds.auth")


def build_verifier(settings: Settings) -> JwtVerifier | None:
    if not settings.auth:
        return None
    try:
        issuers = load_trusted_issuers(settings.trusted_issuers) if settings.trusted_issuers else ()
    except ValueError as e:  # names the file, the issuer and the key: one line, no traceback
        raise ConfigError(f"CDS_TRUSTED_ISSUERS: {e}") from None
    if not issuers:
        log.warning("authentication is on but no trusted issuers are configured (CDS_TRUSTED_ISSUERS): every call gets 401")
    try:
        return JwtVerifier(
            issuers,
            jti_store=build_jti_store(settings),
            max_lifetime=settings.jwt_max_lifetime,
            require_https=not (settings.development or settings.allow_http_jwks),
        )
    except ValueError as e:  # a plain-http JWKS URL outside development
        raise ConfigError(f"CDS_TRUSTED_ISSUERS: {e} (plain http only with CDS_ALLOW_HTTP_JWKS=1)") from None


def build_jti_store(settings: Settings) -> JtiStore:
    """``CDS_JTI_STORE``: ``database`` (the default whenever ``CDS_DATABASE_URL`` is set) shares replay
    protection between instances and across restarts through the database (table ``jwt_replay``, created by
    ``cds db upgrade``); ``memory`` protects one process until it exits, at most ``CDS_JTI_MAX_PER_ISSUER``
    live tokens per issuer."""
    if settings.jti_store != "database":
        return InMemoryJtiStore(settings.jti_max_per_issuer)
    from ..storage import SqlJtiStore, pg_settings

    return SqlJtiStore(settings.database_url, pg=pg_settings(settings))  # the same timeouts as the Store


def require_jwt(bp: Blueprint) -> None:
    """Every endpoint of ``bp`` needs a valid EHR JWT whose ``aud`` is this endpoint's public URL.

    Idempotent: ``bp`` is a module-level blueprint shared by every app ``create_app`` builds, and a
    blueprint cannot take a new ``before_request`` once registered. The hook reads the verifier from
    ``current_app``, so one registration serves every app.
    """
    if getattr(bp, "_lbp_jwt_required", False):
        return
    bp._lbp_jwt_required = True  # type: ignore[attr-defined]

    @bp.before_request
    def _authenticate():
        if request.method == "OPTIONS":  # CORS preflight carries no credentials
            return None
        state = current_app.extensions["lbp_cds"]
        if state.verifier is None:
            return None
        audience = state.settings.public_base_url + request.path
        try:
            claims = state.verifier.verify(request.headers.get("Authorization"), audience=audience)
        except AuthUnavailable:  # the replay store is down or full for this issuer: not the token's fault
            log.warning("answered 503: the token could not be checked", extra={"path": request.path})
            response = error_body(503, "the token cannot be checked right now; try again later")
            response.headers["Retry-After"] = "5"
            return response
        except AuthenticationError:  # the verifier has logged the reason (never the token)
            log.info("answered 401", extra={"path": request.path})
            response = error_body(401, "unauthorized")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        g.cds_issuer = state.verifier.issuer(claims.get("iss"))  # its per-EHR settings (cds.http.ehr)
        return None


def enable_cors(app: Flask, settings: Settings) -> None:
    origins = list(settings.cors_origins) or []
    CORS(
        app,
        resources={r"/cds-services*": {"origins": "*" if origins == ["*"] else origins}},
        allow_headers=["Authorization", "Content-Type"],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
    )
