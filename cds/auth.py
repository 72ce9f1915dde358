"""CDS Hooks 2.0 client authentication: verify the EHR's signed JWT bearer token.

CDS Hooks 2.0 ("Trusting CDS Clients"): every call from the EHR carries
``Authorization: Bearer <JWT>``, signed with the EHR's private key (an
asymmetric JWS algorithm), whose public key is published as a JWK Set at a URL
agreed out of band or, if allow-listed, named by the ``jku`` header. Claims:
``iss``, ``aud`` (the called endpoint's URL), ``exp``, ``iat``, ``jti`` (a nonce
that must never be replayed) and an optional ``tenant``.

Order of the checks (cheap and local first, network last, replay store very
last so that a bad token never consumes a ``jti``):

1. header syntax: ``Bearer`` scheme, compact JWS shape, size limit;
2. JOSE header: ``alg`` in the asymmetric allow-list (never ``none``/HMAC),
   ``kid`` present, ``typ`` ``JWT`` if present, no ``crit``;
3. ``iss`` (read unverified) is a configured trusted issuer - before any key
   is fetched, so a stranger cannot make us issue requests;
4. the JWKS URL is the issuer's ``jwks_url``, or the header ``jku`` only when
   it is exactly on that issuer's allow-list (no other URL is ever fetched);
5. key by ``kid`` from the cached JWKS (a refresh on an unknown ``kid``,
   rate-limited per URL, waited for at most 2 s; a cached ``kid`` never
   waits); the key type/curve must fit ``alg``, and PyJWT is called with
   ``algorithms=[alg]`` and the cryptography key object, so an HMAC
   algorithm can never be used with a public key as the secret;
6. signature, ``aud``, ``iss``, required claims (PyJWT); ``exp``/``iat``/``nbf``
   against our (injectable) clock with a leeway, the lifetime (``exp - iat``,
   ``exp - now``) at most ``max_lifetime``; ``jti``; ``tenant``;
7. ``jti`` recorded in the replay store until ``exp`` + leeway.

Every failure raises :class:`AuthenticationError`; its ``reason`` is a fixed
text meant for logs that never contains the token or any part of it. The
reason is logged here on logger ``cds.auth`` with the (sanitised) ``iss`` and
``kid``; the HTTP layer should answer a generic 401, or 503 for
:class:`AuthUnavailable` (the replay store could not answer).
"""

from __future__ import annotations

import base64
import heapq
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .ehr_profiles import PROFILE_DEFAULTS, EhrProfile, SelectionBehavior
from .errors import CdsError

__all__ = [
    "ALLOWED_ALGORITHMS",
    "AuthUnavailable",
    "AuthenticationError",
    "InMemoryJtiStore",
    "IssuerEntry",
    "JtiStore",
    "JtiStoreFull",
    "JwksCache",
    "JwtVerifier",
    "TrustedIssuer",
    "load_trusted_issuers",
]

logger = logging.getLogger("cds.auth")

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# alg -> the only curve (cryptography name) it may be used with (RFC 7518 §3.4)
EC_ALGORITHMS = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
ALLOWED_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS)

MIN_RSA_KEY_BITS = 2048
MAX_TOKEN_LENGTH = 16 * 1024
MAX_KID_LENGTH = 256
MAX_JTI_LENGTH = 256
MAX_JWKS_BYTES = 256 * 1024
MAX_JWKS_KEYS = 100
_REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]
# base64url segments; the signature may be empty so that alg "none" is
# rejected for what it is rather than as "not a JWT".
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


# --------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class TrustedIssuer:
    """One EHR we trust: its ``iss``, where its keys are, which tenants it may name, and what it needs.

    ``jwks_url`` is fetched when the token has no ``jku`` header; ``jku`` lists
    the only URLs a token's ``jku`` header may point to. ``tenants``, when
    non-empty, is the allow-list for the token's ``tenant`` claim (which is
    then required).

    Per-EHR settings (issue 11), defaults from ``profile`` (:mod:`cds.ehr_profiles`):

    * ``aud``: the accepted ``aud`` values; empty means "the URL of the called endpoint" (CDS Hooks
      2.0). Epic's health systems type the ``aud`` in by hand, so it may be any agreed string;
    * ``fhir_servers``: the allow-list of ``fhirServer`` base URLs a request may name (None: any,
      subject to ``CDS_ALLOW_HTTP_FHIR``); anything else is refused with 412 before it is contacted;
    * ``selection_behavior``: forced on every card with suggestions (None: as the rules wrote it);
    * ``app_context``: False drops ``appContext`` from SMART links.
    """

    iss: str
    jwks_url: str | None = None
    jku: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    profile: str = "generic"
    aud: tuple[str, ...] = ()
    fhir_servers: tuple[str, ...] | None = None
    selection_behavior: SelectionBehavior | None = None
    app_context: bool = True

    @property
    def ehr_profile(self) -> EhrProfile:
        """How answers to this EHR are shaped."""
        return EhrProfile(name=self.profile, selection_behavior=self.selection_behavior, app_context=self.app_context)


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.netloc)
        and not parts.fragment
        and not any(ch.isspace() for ch in value)
    )


def _http_url(value: str) -> str:
    if not _is_http_url(value):
        raise ValueError("must be an absolute http(s) URL")
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


_Url = Annotated[str, AfterValidator(_http_url)]
_Text = Annotated[str, AfterValidator(_non_blank)]


class IssuerEntry(BaseModel):
    """One entry of the trusted-issuers file, as written (keys absent: ``None``, profile defaults apply)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    iss: _Text
    jwks_url: _Url | None = None
    jku: list[_Url] | None = None
    tenants: list[_Text] | None = None
    profile: Literal["generic", "epic", "oracle", "sandbox"] = "generic"
    aud: list[_Text] | None = Field(default=None, min_length=1)
    fhir_servers: list[_Url] | None = Field(default=None, min_length=1)
    selection_behavior: SelectionBehavior | None = None
    app_context: bool | None = None

    def resolve(self) -> TrustedIssuer:
        """The issuer with the profile's defaults filled in where the entry says nothing."""
        defaults = PROFILE_DEFAULTS[self.profile]

        def pick(name: str, fallback: Any) -> Any:
            value = getattr(self, name)
            if value is not None:
                return tuple(value) if isinstance(value, list) else value
            return defaults.get(name, fallback)

        return TrustedIssuer(
            iss=self.iss,
            jwks_url=self.jwks_url,
            jku=pick("jku", ()),
            tenants=pick("tenants", ()),
            profile=self.profile,
            aud=pick("aud", ()),
            fhir_servers=pick("fhir_servers", None),
            selection_behavior=pick("selection_behavior", None),
            app_context=pick("app_context", True),
        )


_ISSUER_FIELDS = tuple(IssuerEntry.model_fields)


def _pydantic_problem(err: Any) -> str:
    kind = err.get("type")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return f"unknown field (allowed: {', '.join(_ISSUER_FIELDS)})"
    if kind == "literal_error":
        return f"must be one of {err.get('ctx', {}).get('expected', '?')}"
    if kind == "too_short":
        return "must not be empty (leave the key out for the default)"
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def load_trusted_issuers(path: str | os.PathLike[str]) -> tuple[TrustedIssuer, ...]:
    """Read ``{"issuers": [{"iss", "jwks_url", "jku", "tenants", "profile", "aud", "fhir_servers",
    "selection_behavior", "app_context"}, ...]}`` (SPEC §4, issue 11; only ``iss`` and a key source are
    required).

    Raises ``ValueError`` naming the file, the issuer (index and ``iss``) and the offending key on any
    problem (unreadable file, bad JSON, wrong type, unknown key, an unknown profile, an issuer with
    neither ``jwks_url`` nor ``jku`` once its profile's defaults apply, duplicate ``iss``).
    """
    name = os.fspath(path)
    where = f"trusted issuers file {name}"
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ValueError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where}: is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None

    def fail(field: str, problem: str, iss: Any = None) -> ValueError:
        who = f" (iss {iss!r})" if isinstance(iss, str) and iss.strip() else ""
        return ValueError(f"{where}: {field}{who}: {problem}")

    if not isinstance(data, dict):
        raise fail("(top level)", 'must be a JSON object {"issuers": [...]}')
    unknown = sorted(set(data) - {"issuers"})
    if unknown:
        raise fail(unknown[0], 'unknown field (expected only "issuers")')
    entries = data.get("issuers")
    if not isinstance(entries, list):
        raise fail("issuers", "required, must be a list of issuer objects")
    if not entries:
        raise fail("issuers", "must list at least one trusted issuer")

    issuers: list[TrustedIssuer] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries):
        at = f"issuers[{n}]"
        if not isinstance(entry, dict):
            raise fail(at, "must be an object")
        iss = entry.get("iss")
        try:
            parsed = IssuerEntry.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
            raise fail(f"{at}{loc}", _pydantic_problem(first), iss) from None
        if parsed.iss in seen:
            raise fail(f"{at}.iss", f"duplicate issuer {parsed.iss!r}")
        seen.add(parsed.iss)
        issuer = parsed.resolve()
        if issuer.jwks_url is None and not issuer.jku:
            raise fail(f"{at}.jwks_url", "required unless a non-empty jku allow-list is given", iss)
        issuers.append(issuer)
    return tuple(issuers)


# --------------------------------------------------------------------------
# errors


class AuthenticationError(CdsError):
    """The request is not authenticated. ``reason`` is for logs, never for the client.

    The reason is a fixed description and never contains the token or any
    part of it; the HTTP layer answers a generic 401.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class AuthUnavailable(AuthenticationError):
    """The token could not be checked right now (the replay store is down or full for its issuer).

    A subclass of :class:`AuthenticationError`, so any caller that only knows that one still fails
    closed; the HTTP layer answers 503 (try again later) rather than 401 (your token is bad).
    """


class JtiStoreFull(CdsError, RuntimeError):
    """The replay store cannot take another live entry for this issuer (fail closed)."""


# --------------------------------------------------------------------------
# replay protection


@runtime_checkable
class JtiStore(Protocol):
    """Replay store. Implementations shared by several instances (Redis ``SET NX
    EXAT``, a database unique key...) make replay protection work across them."""

    def check_and_add(self, jti: str, expires_at: float) -> bool:
        """Atomically record ``jti`` until ``expires_at`` (epoch seconds).

        Return True if it was not already recorded (the token is fresh),
        False if it was (a replay). May raise to fail closed.
        """
        ...


class InMemoryJtiStore:
    """Thread-safe in-process :class:`JtiStore`, bounded per issuer.

    Entries are kept until their expiry and then evicted (expired ones first, always). Each issuer may
    hold at most ``max_per_issuer`` live entries: when an issuer is at its bound its new tokens raise
    :class:`JtiStoreFull` (the verifier answers 503) rather than forgetting a live entry (which would
    allow its replay) - and no other issuer is affected. The verifier passes ``issuer``; a caller that
    does not shares the bound of the issuer ``""``. Only tokens that passed every other check reach
    the store.
    """

    def __init__(self, max_per_issuer: int = 100_000, *, clock: Callable[[], float] = time.time) -> None:
        if max_per_issuer < 1:
            raise ValueError("max_per_issuer must be at least 1")
        self._max = max_per_issuer
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[str, tuple[float, str]] = {}  # key -> (expires_at, issuer)
        self._per_issuer: dict[str, int] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        with self._lock:
            self._evict_expired(self._clock())
            return len(self._expiry)

    def __contains__(self, jti: object) -> bool:
        with self._lock:
            self._evict_expired(self._clock())
            return jti in self._expiry

    def live_for(self, issuer: str) -> int:
        """Live entries held for ``issuer``."""
        with self._lock:
            self._evict_expired(self._clock())
            return self._per_issuer.get(issuer, 0)

    def _evict_expired(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires_at, jti = heapq.heappop(heap)
            held = self._expiry.get(jti)
            if held is not None and held[0] == expires_at:
                del self._expiry[jti]
                left = self._per_issuer[held[1]] - 1
                if left:
                    self._per_issuer[held[1]] = left
                else:
                    del self._per_issuer[held[1]]

    def check_and_add(self, jti: str, expires_at: float, *, issuer: str = "") -> bool:
        now = self._clock()
        with self._lock:
            self._evict_expired(now)
            if jti in self._expiry:
                return False
            if expires_at <= now:
                # Already past its lifetime: nothing to remember.
                return True
            held = self._per_issuer.get(issuer, 0)
            if held >= self._max:
                raise JtiStoreFull(f"replay store holds {self._max} live entries for this issuer")
            self._expiry[jti] = (expires_at, issuer)
            self._per_issuer[issuer] = held + 1
            heapq.heappush(self._heap, (expires_at, jti))
            return True


# --------------------------------------------------------------------------
# keys


@dataclass(frozen=True)
class _VerificationKey:
    kid: str
    alg: str | None  # the JWK's "alg" member, if any
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey

    def fits(self, alg: str) -> bool:
        if self.alg is not None and self.alg != alg:
            return False
        if alg in RSA_ALGORITHMS:
            return isinstance(self.key, rsa.RSAPublicKey)
        curve = EC_ALGORITHMS.get(alg)
        return (
            curve is not None
            and isinstance(self.key, ec.EllipticCurvePublicKey)
            and self.key.curve.name == curve
        )


class _JwksFetchError(Exception):
    pass


class _JwksEntry:
    __slots__ = ("keys", "fetched_at", "last_attempt", "last_error", "lock", "tokens", "refilled_at", "refreshing")

    def __init__(self, burst: float) -> None:
        self.keys: dict[str, list[_VerificationKey]] = {}
        self.fetched_at: float | None = None
        self.last_attempt: float | None = None
        self.last_error: str | None = None
        # held only to read or swap the fields above, never during a fetch
        self.lock = threading.Lock()
        self.tokens = burst  # the refresh token bucket of this URL
        self.refilled_at: float | None = None
        self.refreshing: threading.Event | None = None  # set when the fetch in progress ends


def _parse_jwks(doc: Any, url: str) -> dict[str, list[_VerificationKey]]:
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise _JwksFetchError('not a JWK Set (no "keys" list)')
    raw_keys = doc["keys"]
    if len(raw_keys) > MAX_JWKS_KEYS:
        raise _JwksFetchError(f"more than {MAX_JWKS_KEYS} keys")
    result: dict[str, list[_VerificationKey]] = {}
    for index, jwk in enumerate(raw_keys):
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        kty = jwk.get("kty")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            logger.info("JWKS %s: key #%d skipped: no usable kid", url, index)
            continue
        if kty not in ("RSA", "EC"):
            logger.info("JWKS %s: key kid=%r skipped: kty not RSA or EC", url, kid)
            continue
        if _PRIVATE_JWK_MEMBERS & jwk.keys():
            logger.warning("JWKS %s: key kid=%r skipped: it contains private key material", url, kid)
            continue
        use = jwk.get("use")
        ops = jwk.get("key_ops")
        if use is not None and use != "sig":
            continue
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        jwk_alg = jwk.get("alg")
        if jwk_alg is not None and jwk_alg not in ALLOWED_ALGORITHMS:
            logger.info("JWKS %s: key kid=%r skipped: alg not an allowed algorithm", url, kid)
            continue
        try:
            key = jwt.PyJWK(jwk).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            logger.info("JWKS %s: key kid=%r skipped: cannot be loaded (%s)", url, kid, type(exc).__name__)
            continue
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < MIN_RSA_KEY_BITS:
                logger.warning("JWKS %s: key kid=%r skipped: RSA key shorter than %d bits", url, kid, MIN_RSA_KEY_BITS)
                continue
        elif not isinstance(key, ec.EllipticCurvePublicKey):
            continue
        result.setdefault(kid, []).append(_VerificationKey(kid=kid, alg=jwk_alg, key=key))
    return result


class JwksCache:
    """Fetch JWK Sets over HTTP(S) and cache them per URL.

    * a URL is fetched when first needed, when its copy is older than
      ``max_age``, or when asked for a ``kid`` it does not hold - but at most
      as a token bucket per URL allows (``refresh_burst`` fetches at once, one
      more every ``min_refresh_interval`` seconds; failed attempts count too),
      so a flood of tokens with made-up ``kid`` values cannot make us hammer
      the issuer;
    * no lock is held during a fetch: a caller whose ``kid`` is cached never
      waits (a stale copy is refreshed in the background while it stays in
      use); only a caller with an unknown ``kid`` waits for the fetch, and at
      most ``wait_timeout`` seconds;
    * requests have a timeout, do not follow redirects, and the body is limited
      to ``max_bytes``;
    * when a refresh fails the previously fetched keys stay in use.

    The cache only fetches the URL it is given; choosing a URL (and refusing
    non-allow-listed ones) is the verifier's job.
    """

    def __init__(
        self,
        http_client: httpx.Client | None = None,
        *,
        clock: Callable[[], float] = time.time,
        min_refresh_interval: float = 10,
        refresh_burst: int = 2,
        max_age: float = 3600,
        timeout: float = 5.0,
        wait_timeout: float = 2.0,
        max_bytes: int = MAX_JWKS_BYTES,
    ) -> None:
        if refresh_burst < 1:
            raise ValueError("refresh_burst must be at least 1")
        self._owns_client = http_client is None
        self._client = http_client or httpx.Client(timeout=timeout, follow_redirects=False)
        self._clock = clock
        self._min_refresh_interval = float(min_refresh_interval)
        self._burst = float(refresh_burst)
        self._max_age = float(max_age)
        self._timeout = float(timeout)
        self._wait_timeout = float(wait_timeout)
        self._max_bytes = int(max_bytes)
        self._entries: dict[str, _JwksEntry] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def _entry(self, url: str) -> _JwksEntry:
        with self._lock:
            entry = self._entries.get(url)
            if entry is None:
                entry = self._entries[url] = _JwksEntry(self._burst)
            return entry

    def _take_token(self, entry: _JwksEntry, now: float) -> bool:
        """One refresh allowed by the URL's bucket? (``entry.lock`` held.)"""
        if entry.refilled_at is not None and self._min_refresh_interval > 0:
            gained = max(0.0, now - entry.refilled_at) / self._min_refresh_interval
            entry.tokens = min(self._burst, entry.tokens + gained)
        elif entry.refilled_at is not None:
            entry.tokens = self._burst
        entry.refilled_at = now
        if entry.tokens < 1:
            return False
        entry.tokens -= 1
        return True

    def get_keys(self, url: str, kid: str) -> list[_VerificationKey]:
        """Keys with this ``kid`` from the JWKS at ``url``; raises AuthenticationError."""
        entry = self._entry(url)
        now = self._clock()
        with entry.lock:
            keys = entry.keys.get(kid)
            stale = entry.fetched_at is None or now - entry.fetched_at >= self._max_age
            if keys and not stale:
                return list(keys)
            done = entry.refreshing
            if done is None and self._take_token(entry, now):
                done = entry.refreshing = threading.Event()
                entry.last_attempt = now
                threading.Thread(
                    target=self._refresh, args=(url, entry, done, now), name="jwks-refresh", daemon=True
                ).start()
            elif done is None and not keys:
                logger.info("JWKS %s: refresh for an unknown kid suppressed (rate limit)", url)
        if keys:  # cached but stale: keep using it while the refresh runs
            return list(keys)
        if done is not None and not done.wait(self._wait_timeout):
            logger.warning("JWKS %s: no answer within %.1f s for an unknown kid", url, self._wait_timeout)
        with entry.lock:
            keys = entry.keys.get(kid)
            if keys:
                return list(keys)
            if entry.fetched_at is None:
                raise AuthenticationError(f"JWKS unavailable: {entry.last_error or 'not fetched'}")
        raise AuthenticationError("kid not found in the issuer's JWKS")

    def _refresh(self, url: str, entry: _JwksEntry, done: threading.Event, now: float) -> None:
        try:
            try:
                keys = self._fetch(url)
            except _JwksFetchError as exc:
                with entry.lock:
                    entry.last_error = str(exc)
                logger.warning("JWKS %s: fetch failed: %s", url, exc)
                return
            except Exception as exc:  # noqa: BLE001 - a background thread must not die silently
                with entry.lock:
                    entry.last_error = f"unexpected {type(exc).__name__}"
                logger.error("JWKS %s: fetch failed: unexpected %s", url, type(exc).__name__)
                return
            with entry.lock:
                entry.keys = keys
                entry.fetched_at = now
                entry.last_error = None
            logger.info("JWKS %s: fetched %d key id(s)", url, len(keys))
        finally:
            with entry.lock:
                entry.refreshing = None
            done.set()

    def _fetch(self, url: str) -> dict[str, list[_VerificationKey]]:
        deadline = time.monotonic() + 2 * self._timeout
        try:
            with self._client.stream(
                "GET",
                url,
                headers={"Accept": "application/jwk-set+json, application/json"},
                timeout=self._timeout,
                follow_redirects=False,
            ) as response:
                if response.status_code != 200:
                    raise _JwksFetchError(f"HTTP status {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise _JwksFetchError(f"response larger than {self._max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise _JwksFetchError("response too slow")
        except httpx.HTTPError as exc:
            raise _JwksFetchError(f"request failed ({type(exc).__name__})") from None
        try:
            doc = json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError):
            raise _JwksFetchError("response is not JSON") from None
        return _parse_jwks(doc, url)


# --------------------------------------------------------------------------
# the verifier


def _for_log(value: Any) -> str:
    """A short, printable rendering of an untrusted header/claim value for logs."""
    if value is None:
        return "-"
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    if len(value) > 100:
        value = value[:100] + "..."
    return repr(value)


def _json_segment(segment: str) -> dict[str, Any] | None:
    """A JWS header or payload segment (base64url, already checked by ``_COMPACT_JWS``) as a JSON object, or
    None when it is not one (bad length, not UTF-8 JSON, not an object), as PyJWT would refuse it."""
    if len(segment) % 4 == 1:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, TypeError, RecursionError):  # binascii.Error and JSONDecodeError are ValueErrors
        return None
    return value if isinstance(value, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class JwtVerifier:
    """Verify CDS Hooks 2.0 client JWTs against a set of trusted issuers.

    Thread-safe; build one per application and share it. ``leeway`` (seconds)
    absorbs clock skew for ``exp``/``iat``/``nbf``. ``jti_store`` defaults to a
    bounded :class:`InMemoryJtiStore` (per process: several instances behind a
    load balancer need a shared store). ``http_client`` is used to fetch JWKS;
    ``jwks_cache`` may be passed instead to share a cache. ``max_lifetime``
    (seconds, default 900: Epic's tokens live 15 minutes) bounds both
    ``exp - iat`` and ``exp - now`` (plus the leeway). ``require_https``
    refuses (``ValueError``) an issuer whose ``jwks_url`` or ``jku`` is not
    https. A replay store that fails or is full raises :class:`AuthUnavailable`.
    """

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        *,
        jti_store: JtiStore | None = None,
        leeway: float = 30,
        http_client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        min_refresh_interval: float = 10,
        jwks_cache: JwksCache | None = None,
        max_lifetime: float = 900,
        require_https: bool = False,
    ) -> None:
        by_iss: dict[str, TrustedIssuer] = {}
        for issuer in issuers:
            if not isinstance(issuer, TrustedIssuer):
                raise TypeError("issuers must be TrustedIssuer instances")
            if issuer.iss in by_iss:
                raise ValueError(f"duplicate trusted issuer {issuer.iss!r}")
            if not issuer.jwks_url and not issuer.jku:
                raise ValueError(f"trusted issuer {issuer.iss!r} has neither jwks_url nor jku")
            by_iss[issuer.iss] = issuer
        if not 0 <= leeway <= 300:
            raise ValueError("leeway must be between 0 and 300 seconds")
        if not max_lifetime > 0:
            raise ValueError("max_lifetime must be a positive number of seconds")
        if require_https:
            for issuer in by_iss.values():
                for url in (issuer.jwks_url, *issuer.jku):
                    if url and urlsplit(url).scheme != "https":
                        raise ValueError(f"trusted issuer {issuer.iss!r}: JWKS URL {url!r} is not https")
        self._max_lifetime = float(max_lifetime)
        self._issuers = by_iss
        self._leeway = float(leeway)
        self._clock = clock
        self._jti_store: JtiStore = jti_store if jti_store is not None else InMemoryJtiStore(clock=clock)
        self._jwks = jwks_cache or JwksCache(
            http_client, clock=clock, min_refresh_interval=min_refresh_interval
        )

    @property
    def issuers(self) -> tuple[TrustedIssuer, ...]:
        return tuple(self._issuers.values())

    def issuer(self, iss: Any) -> TrustedIssuer | None:
        """The trusted issuer ``iss`` (the ``iss`` claim of a verified token), or None."""
        return self._issuers.get(iss) if isinstance(iss, str) else None

    def close(self) -> None:
        self._jwks.close()

    def verify(self, authorization_header: str | None, audience: str) -> dict[str, Any]:
        """Return the verified claims of the bearer JWT, or raise AuthenticationError.

        ``audience`` is the URL the EHR called, built from the configured
        public base URL (not from the Host header). It is the accepted ``aud``
        unless the issuer lists its own ``aud`` values (Epic: set by hand),
        which then replace it.
        """
        ctx: dict[str, Any] = {}
        try:
            claims = self._verify(authorization_header, audience, ctx)
        except AuthenticationError as exc:
            logger.warning(
                "JWT rejected: %s (iss=%s kid=%s)",
                exc.reason, _for_log(ctx.get("iss")), _for_log(ctx.get("kid")),
            )
            raise
        except Exception as exc:  # fail closed; never let a client input become a 500
            logger.error(
                "JWT rejected: unexpected %s during verification (iss=%s kid=%s)",
                type(exc).__name__, _for_log(ctx.get("iss")), _for_log(ctx.get("kid")),
            )
            raise AuthenticationError("internal error during verification") from None
        if logger.isEnabledFor(logging.DEBUG):  # no formatting work for a line nobody reads
            logger.debug("JWT accepted (iss=%s kid=%s)", _for_log(ctx.get("iss")), _for_log(ctx.get("kid")))
        return claims

    # The token must not leak into exception chains either: every
    # AuthenticationError below is raised ``from None``.
    def _verify(self, authorization_header: str | None, audience: str, ctx: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(audience, str) or not audience:
            raise AuthenticationError("no audience configured for this endpoint")
        if not authorization_header:
            raise AuthenticationError("no Authorization header")
        if not isinstance(authorization_header, str):
            raise AuthenticationError("malformed Authorization header")
        parts = authorization_header.split()
        if not parts or parts[0].lower() != "bearer":
            raise AuthenticationError("Authorization scheme is not Bearer")
        if len(parts) != 2:
            raise AuthenticationError("malformed Bearer credentials")
        token = parts[1]
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthenticationError("bearer token too long")
        if not _COMPACT_JWS.fullmatch(token):
            raise AuthenticationError("bearer token is not a compact JWT")

        # --- JOSE header (header and payload read once here; PyJWT parses the token once, to verify it)
        header_b64, payload_b64, _signature = token.split(".")
        header = _json_segment(header_b64)
        if header is None:
            raise AuthenticationError("malformed JWT header")
        ctx["kid"] = header.get("kid")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise AuthenticationError("JWT alg is not an allowed asymmetric algorithm")
        if "crit" in header:
            raise AuthenticationError("JWT header has unsupported crit extensions")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise AuthenticationError("JWT typ is not JWT")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            raise AuthenticationError("JWT header has no usable kid")
        jku = header.get("jku")
        if jku is not None and not isinstance(jku, str):
            raise AuthenticationError("JWT jku is not a string")

        # --- trusted issuer, before any key is fetched
        unverified = _json_segment(payload_b64)
        if unverified is None:
            raise AuthenticationError("malformed JWT payload")
        iss = unverified.get("iss")
        ctx["iss"] = iss
        if not isinstance(iss, str):
            raise AuthenticationError("JWT has no iss")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise AuthenticationError("JWT iss is not a trusted issuer")

        # --- which JWKS: configured URL, or an allow-listed jku - nothing else
        if jku is not None:
            if jku not in issuer.jku and jku != issuer.jwks_url:
                raise AuthenticationError("JWT jku is not on the issuer's allow-list")
            jwks_url = jku
        elif issuer.jwks_url:
            jwks_url = issuer.jwks_url
        else:
            raise AuthenticationError("JWT has no jku and the issuer has no jwks_url")

        candidates = [k for k in self._jwks.get_keys(jwks_url, kid) if k.fits(alg)]
        if not candidates:
            raise AuthenticationError("the key for kid does not fit the JWT alg")

        # --- signature, aud, iss, required claims (PyJWT); times checked below
        claims: dict[str, Any] | None = None
        for candidate in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key=candidate.key,
                    algorithms=[alg],
                    audience=list(issuer.aud) if issuer.aud else audience,
                    issuer=issuer.iss,
                    options={
                        "require": _REQUIRED_CLAIMS,
                        "verify_signature": True,
                        "verify_aud": True,
                        "verify_iss": True,
                        "verify_exp": False,
                        "verify_iat": False,
                        "verify_nbf": False,
                    },
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.MissingRequiredClaimError as exc:
                claim = exc.claim if exc.claim in _REQUIRED_CLAIMS else "?"
                raise AuthenticationError(f"JWT lacks required claim {claim}") from None
            except jwt.InvalidAudienceError:
                raise AuthenticationError("JWT aud does not match this endpoint") from None
            except jwt.InvalidIssuerError:
                raise AuthenticationError("JWT iss mismatch") from None
            except jwt.DecodeError:
                raise AuthenticationError("malformed JWT") from None
            except jwt.PyJWTError as exc:
                raise AuthenticationError(f"invalid JWT ({type(exc).__name__})") from None
        if claims is None:
            raise AuthenticationError("JWT signature does not verify")

        # --- times, against our clock
        now = self._clock()
        leeway = self._leeway
        exp = _number(claims.get("exp"))
        if exp is None:
            raise AuthenticationError("JWT exp is not a number")
        if now > exp + leeway:
            raise AuthenticationError("JWT expired")
        iat = _number(claims.get("iat"))
        if iat is None:
            raise AuthenticationError("JWT iat is not a number")
        if iat > now + leeway:
            raise AuthenticationError("JWT iat is in the future")
        if exp - iat > self._max_lifetime + leeway:
            raise AuthenticationError("JWT lifetime (exp - iat) exceeds the maximum")
        if exp - now > self._max_lifetime + leeway:
            raise AuthenticationError("JWT exp is further ahead than the maximum lifetime")
        if "nbf" in claims:
            nbf = _number(claims["nbf"])
            if nbf is None:
                raise AuthenticationError("JWT nbf is not a number")
            if nbf > now + leeway:
                raise AuthenticationError("JWT not yet valid (nbf)")

        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise AuthenticationError("JWT jti is not a usable string")

        if issuer.tenants:
            tenant = claims.get("tenant")
            if not isinstance(tenant, str) or tenant not in issuer.tenants:
                raise AuthenticationError("JWT tenant is not allowed for this issuer")

        # --- replay, last, so rejected tokens never consume a jti. Keyed by
        # issuer so two EHRs' nonces cannot collide.
        key = json.dumps([iss, jti])
        try:
            if isinstance(self._jti_store, InMemoryJtiStore):
                fresh = self._jti_store.check_and_add(key, exp + leeway, issuer=iss)
            else:
                fresh = self._jti_store.check_and_add(key, exp + leeway)
        except JtiStoreFull:
            raise AuthUnavailable("replay store full for this issuer") from None
        except Exception as exc:
            raise AuthUnavailable(f"replay store unavailable ({type(exc).__name__})") from None
        if not fresh:
            raise AuthenticationError("JWT jti replayed")
        return claims
