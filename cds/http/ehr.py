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

import logging
import re
from collections.abc import Iterable

from flask import current_app, g

from ..auth import TrustedIssuer
from ..cdshooks import CdsResponse
from ..ehr_profiles import GENERIC, EhrProfile, fhir_server_allowed, shape_response
from .errors import ApiError

log = logging.getLogger("cds.http")

#: at most this many distinct field names become metric labels; the rest count as ``(other)``
MAX_FIELD_LABELS = 50
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


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


def _label(name: str) -> str:
    return name if _FIELD_NAME.match(name) else "(unnamed)"


def note_ignored_feedback_fields(names: Iterable[str]) -> None:
    """Count (``cds_feedback_unknown_fields_total{field}``) and log, by name only, the unknown keys a
    feedback body sent. Names that are not plain identifiers count as ``(unnamed)``; past
    :data:`MAX_FIELD_LABELS` distinct names, as ``(other)``, so a client cannot grow the label set."""
    labels = sorted({_label(n) for n in names})
    if not labels:
        return
    counter = current_app.extensions["lbp_cds"].feedback_unknown_fields
    if counter is not None:
        seen = {sample.labels.get("field") for metric in counter.collect() for sample in metric.samples}
        for name in labels:
            if name not in seen and len(seen) >= MAX_FIELD_LABELS:
                name = "(other)"
            seen.add(name)
            counter.labels(name).inc()
    log.info("feedback: ignored unknown field(s): %s", ", ".join(labels))
