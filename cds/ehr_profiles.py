"""What each EHR needs from our answers, per trusted issuer (issue 11): pure, no Flask.

An issuer entry of the trusted-issuers file (:mod:`cds.auth`) names a ``profile`` that sets defaults for
what an EHR accepts; explicit keys of the entry win over the profile's defaults:

=========== ================================================================================
profile     defaults
=========== ================================================================================
``generic`` none: cards go out as the rules wrote them
``epic``    ``selection_behavior: any`` (Epic supports only ``selectionBehavior: "any"``)
``oracle``  ``app_context: false`` (Oracle Health takes no ``appContext`` on SMART links)
``sandbox`` ``jku: ["https://sandbox.cds-hooks.org/.well-known/jwks.json"]`` (the key set the CDS
            Hooks sandbox names in its tokens' ``jku`` header)
=========== ================================================================================

:func:`shape_response` applies an :class:`EhrProfile` to a response: ``selectionBehavior`` set on every card
that has suggestions, ``appContext`` dropped from links. :func:`fhir_server_allowed` checks a hook request's
``fhirServer`` against an issuer's allow-list. Neither changes clinical content: which cards, their text,
suggestions and links are the rule files' business.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from .cdshooks import Card, CdsResponse

__all__ = [
    "EhrProfile",
    "GENERIC",
    "PROFILES",
    "PROFILE_DEFAULTS",
    "SANDBOX_JKU",
    "SelectionBehavior",
    "fhir_server_allowed",
    "normalise_base_url",
    "shape_cards",
    "shape_response",
]

ProfileName = Literal["generic", "epic", "oracle", "sandbox"]
SelectionBehavior = Literal["at-most-one", "any"]

#: the JWK Set URL the public CDS Hooks sandbox (sandbox.cds-hooks.org) puts in its tokens' ``jku`` header
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"

PROFILES: tuple[str, ...] = get_args(ProfileName)

#: profile -> the issuer-entry keys it sets when the entry does not (see the module docstring)
PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "generic": {},
    "epic": {"selection_behavior": "any"},
    "oracle": {"app_context": False},
    "sandbox": {"jku": (SANDBOX_JKU,)},
}


@dataclass(frozen=True)
class EhrProfile:
    """How to shape the answers for one EHR. ``selection_behavior`` None: as the rules wrote it."""

    name: str = "generic"
    selection_behavior: SelectionBehavior | None = None
    app_context: bool = True

    @property
    def changes_cards(self) -> bool:
        return self.selection_behavior is not None or not self.app_context


#: no EHR-specific shaping (authentication off, or an issuer without a profile)
GENERIC = EhrProfile()


def shape_cards(cards: Iterable[Card], profile: EhrProfile) -> list[Card]:
    """``cards`` as ``profile`` needs them; a card that needs no change is returned as it is."""
    out: list[Card] = []
    for card in cards:
        update: dict[str, Any] = {}
        if profile.selection_behavior is not None and card.suggestions:
            if card.selection_behavior != profile.selection_behavior:
                update["selection_behavior"] = profile.selection_behavior
        if not profile.app_context and any(link.app_context is not None for link in card.links):
            update["links"] = [
                link.model_copy(update={"app_context": None}) if link.app_context is not None else link
                for link in card.links
            ]
        out.append(card.model_copy(update=update) if update else card)
    return out


def shape_response(response: CdsResponse, profile: EhrProfile) -> CdsResponse:
    """``response`` with its cards shaped for ``profile`` (the same object when nothing changes)."""
    if not profile.changes_cards or not response.cards:
        return response
    return response.model_copy(update={"cards": shape_cards(response.cards, profile)})


def normalise_base_url(url: str) -> str:
    """A FHIR base URL compared case-insensitively in scheme and host, without a trailing slash."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}{query}"


def fhir_server_allowed(fhir_server: str, allowed: Iterable[str] | None) -> bool:
    """Whether ``fhir_server`` is on the allow-list ``allowed`` (None: any server is allowed)."""
    if allowed is None:
        return True
    target = normalise_base_url(fhir_server)
    return any(normalise_base_url(url) == target for url in allowed)
