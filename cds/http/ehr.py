"""The calling EHR's settings, for the routes: its ``fhirServer`` allow-list and how its cards are shaped.

:func:`cds.http.security.require_jwt` puts the verified token's :class:`~cds.auth.TrustedIssuer` on
``flask.g.cds_issuer``; these two helpers are all a route needs:

* :func:`check_fhir_server` before any fetch: a ``fhirServer`` that is not on the issuer's
  ``fhir_servers`` allow-list is a 412 (issue code ``forbidden``, expression ``fhirServer``) and is never
  contacted;
* :func:`shape_for_ehr` before ``jsonify``: the response shaped by the issuer's profile
  (:func:`cds.ehr_profiles.shape_response`).

With authentication off (development) there is no issuer: any ``fhirServer`` (subject to
``CDS_ALLOW_HTTP_FHIR``) and the ``generic`` profile.
"""

from __future__ import annotations

from flask import g

from ..auth import TrustedIssuer
from ..cdshooks import CdsResponse
from ..ehr_profiles import GENERIC, EhrProfile, fhir_server_allowed, shape_response
from .errors import ApiError


def current_issuer() -> TrustedIssuer | None:
    """The trusted issuer of this request's verified token (None when authentication is off)."""
    return g.get("cds_issuer")


def current_profile() -> EhrProfile:
    issuer = current_issuer()
    return issuer.ehr_profile if issuer is not None else GENERIC


def check_fhir_server(fhir_server: str | None) -> None:
    """412 for a ``fhirServer`` the calling EHR's issuer entry does not allow (never echoes the URL)."""
    issuer = current_issuer()
    if fhir_server is None or issuer is None:
        return
    if not fhir_server_allowed(fhir_server, issuer.fhir_servers):
        raise ApiError(
            412,
            "fhirServer: not on the allow-list of FHIR servers configured for this EHR; it was not contacted",
            field="fhirServer",
            code="forbidden",
        )


def shape_for_ehr(response: CdsResponse) -> CdsResponse:
    """``response`` as the calling EHR needs it (selectionBehavior, appContext)."""
    return shape_response(response, current_profile())
