"""CDS Hooks 2.0 client authentication (cds.auth): JWT verification end to end.

Keys are generated here; JWK Sets are served by a real loopback HTTP server
(tests/jwks_server.py) so fetching, caching and rate limiting are exercised
for real. Time is a fake clock handed to the verifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds.auth import (
    AuthenticationError,
    InMemoryJtiStore,
    JtiStoreFull,
    JwtVerifier,
    TrustedIssuer,
    load_trusted_issuers,
)

try:
    from jwks_server import JwksServer
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests.jwks_server import JwksServer

ISS = "https://ehr.example.org"
OTHER_ISS = "https://other-ehr.example.org"
AUD = "https://cds.example.net/cds-services/lbp-next-step"
T0 = 1_750_000_000.0
JWKS_PATH = "/ehr/jwks.json"
JKU_PATH = "/ehr/rotating/jwks.json"
EVIL_PATH = "/evil/jwks.json"
EC_KID = "ec-384-1"
RSA_KID = "rsa-1"


# --------------------------------------------------------------------------
# helpers


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def public_jwk(private_key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    public = private_key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    jwk = dict(jwk)
    jwk.update({"kid": kid, "use": "sig"})
    if alg:
        jwk["alg"] = alg
    return jwk


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "iss": ISS,
        "sub": "ehr-client-1",
        "aud": AUD,
        "iat": int(T0),
        "exp": int(T0) + 300,
        "jti": str(uuid.uuid4()),
    }
    for key, value in overrides.items():
        if value is _DROP:
            base.pop(key, None)
        else:
            base[key] = value
    return base


_DROP = object()


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def server(ec_key, rsa_key):
    with JwksServer() as srv:
        srv.set_jwks(JWKS_PATH, {"keys": [public_jwk(ec_key, EC_KID, "ES384"), public_jwk(rsa_key, RSA_KID)]})
        yield srv


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def issuers(server) -> tuple[TrustedIssuer, ...]:
    return (
        TrustedIssuer(iss=ISS, jwks_url=server.url(JWKS_PATH), jku=(server.url(JKU_PATH),)),
        TrustedIssuer(iss=OTHER_ISS, jwks_url=server.url("/other/jwks.json"), tenants=("clinic-a", "clinic-b")),
    )


@pytest.fixture
def verifier(issuers, clock):
    v = JwtVerifier(issuers, clock=clock, leeway=30, min_refresh_interval=30)
    yield v
    v.close()


def es384(ec_key, payload: dict[str, Any] | None = None, **headers: Any) -> str:
    hdr = {"kid": EC_KID, "typ": "JWT", **headers}
    return jwt.encode(payload if payload is not None else claims(), ec_key, algorithm="ES384", headers=hdr)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def reject(verifier: JwtVerifier, header: str | None, audience: str = AUD) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(header, audience=audience)
    return info.value


# --------------------------------------------------------------------------
# accepted


def test_valid_es384_token_is_accepted(verifier, ec_key, server):
    payload = claims()
    result = verifier.verify(bearer(es384(ec_key, payload)), audience=AUD)
    assert result["iss"] == ISS and result["jti"] == payload["jti"] and result["aud"] == AUD
    assert server.request_count(JWKS_PATH) == 1


@pytest.mark.parametrize("alg", ["RS384", "RS256", "PS384"])
def test_valid_rsa_token_is_accepted(verifier, rsa_key, alg):
    token = jwt.encode(claims(), rsa_key, algorithm=alg, headers={"kid": RSA_KID})
    assert verifier.verify(bearer(token), audience=AUD)["iss"] == ISS


def test_aud_as_list_containing_the_endpoint_is_accepted(verifier, ec_key):
    token = es384(ec_key, claims(aud=["https://elsewhere.example/x", AUD]))
    assert verifier.verify(bearer(token), audience=AUD)["aud"][1] == AUD


def test_bearer_scheme_is_case_insensitive_and_typ_optional(verifier, ec_key):
    token = jwt.encode(claims(), ec_key, algorithm="ES384", headers={"kid": EC_KID, "typ": None})
    assert "typ" not in jwt.get_unverified_header(token)
    verifier.verify(f"bearer {token}", audience=AUD)


def test_jwks_is_cached_between_calls(verifier, ec_key, server):
    for _ in range(5):
        verifier.verify(bearer(es384(ec_key)), audience=AUD)
    assert server.request_count(JWKS_PATH) == 1


def test_allow_listed_jku_is_used(verifier, other_ec_key, server):
    server.set_jwks(JKU_PATH, {"keys": [public_jwk(other_ec_key, "rotated-1", "ES384")]})
    token = jwt.encode(
        claims(), other_ec_key, algorithm="ES384", headers={"kid": "rotated-1", "jku": server.url(JKU_PATH)}
    )
    assert verifier.verify(bearer(token), audience=AUD)["iss"] == ISS
    assert server.request_count(JKU_PATH) == 1
    assert server.request_count(JWKS_PATH) == 0


def test_tenant_on_the_allow_list_is_accepted(verifier, ec_key, server):
    server.set_jwks("/other/jwks.json", {"keys": [public_jwk(ec_key, EC_KID)]})
    token = es384(ec_key, claims(iss=OTHER_ISS, tenant="clinic-b"))
    assert verifier.verify(bearer(token), audience=AUD)["tenant"] == "clinic-b"


def test_token_expired_within_leeway_is_accepted(verifier, ec_key, clock):
    token = es384(ec_key)
    clock.advance(300 + 20)  # past exp, inside the 30 s leeway
    verifier.verify(bearer(token), audience=AUD)


def test_key_rotation_new_kid_is_picked_up_after_refresh(verifier, ec_key, other_ec_key, server, clock):
    verifier.verify(bearer(es384(ec_key)), audience=AUD)
    server.set_jwks(JWKS_PATH, {"keys": [public_jwk(ec_key, EC_KID), public_jwk(other_ec_key, "ec-384-2")]})
    clock.advance(31)
    token = jwt.encode(claims(), other_ec_key, algorithm="ES384", headers={"kid": "ec-384-2"})
    verifier.verify(bearer(token), audience=AUD)
    assert server.request_count(JWKS_PATH) == 2


# --------------------------------------------------------------------------
# rejected: transport and shape


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_authorization_header(verifier, header, server):
    err = reject(verifier, header)
    assert "Authorization" in err.reason or "Bearer" in err.reason
    assert server.request_count() == 0


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Token abc.def.ghi", "Bearer", "Bearer a.b.c extra", "JWT eyJhbGciOiJFUzM4NCJ9.e30.sig"],
)
def test_not_a_bearer_credential(verifier, header):
    reject(verifier, header)


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        "e30.e30.!!!",
        "####.####.####",
        "aGVsbG8.d29ybGQ.c2ln",  # base64url, but not JSON
        "x" * 20_000,
    ],
)
def test_not_a_jwt(verifier, token, server):
    reject(verifier, bearer(token))
    assert server.request_count() == 0


@pytest.mark.parametrize("signature", ["", "c2lnbmF0dXJl"])
def test_alg_none_is_rejected(verifier, signature, server):
    token = f"{b64url_json({'alg': 'none', 'typ': 'JWT', 'kid': EC_KID})}.{b64url_json(claims())}.{signature}"
    err = reject(verifier, bearer(token))
    assert "alg" in err.reason
    assert server.request_count() == 0


@pytest.mark.parametrize("alg,digest", [("HS256", hashlib.sha256), ("HS384", hashlib.sha384)])
def test_hmac_signed_with_the_public_key_is_rejected(verifier, ec_key, rsa_key, server, alg, digest):
    """The classic key-confusion attack: HMAC with the issuer's public key as the secret."""
    for key, kid in ((rsa_key, RSA_KID), (ec_key, EC_KID)):
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signing_input = f"{b64url_json({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{b64url_json(claims())}"
        signature = b64url(hmac.new(pem, signing_input.encode(), digest).digest())
        err = reject(verifier, bearer(f"{signing_input}.{signature}"))
        assert "alg" in err.reason
    assert server.request_count() == 0


def test_hmac_is_rejected_even_if_the_jwks_offers_a_symmetric_key(verifier, server):
    secret = b"shared-secret-shared-secret-0123"
    server.set_jwks(JWKS_PATH, {"keys": [{"kty": "oct", "kid": "oct-1", "k": b64url(secret)}]})
    token = jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": "oct-1"})
    reject(verifier, bearer(token))


def test_alg_must_fit_the_key_type(verifier, rsa_key):
    # Signed with the RSA key, but naming the EC key's kid: the kid's key is
    # EC P-384, which cannot verify RS384.
    token = jwt.encode(claims(), rsa_key, algorithm="RS384", headers={"kid": EC_KID})
    err = reject(verifier, bearer(token))
    assert "fit" in err.reason


def test_es256_header_on_a_p384_key_is_rejected(verifier, server):
    p256 = ec.generate_private_key(ec.SECP256R1())
    server.set_jwks(JWKS_PATH, {"keys": [public_jwk(p256, "p256")]})
    token = jwt.encode(claims(), p256, algorithm="ES256", headers={"kid": "p256"})
    verifier.verify(bearer(token), audience=AUD)  # P-256 key, ES256: fine
    bad = jwt.encode(claims(), p256, algorithm="ES256", headers={"kid": EC_KID})
    reject(verifier, bearer(bad))


def test_kid_is_required(verifier, ec_key, server):
    token = jwt.encode(claims(), ec_key, algorithm="ES384")
    err = reject(verifier, bearer(token))
    assert "kid" in err.reason
    assert server.request_count() == 0


def test_typ_other_than_jwt_is_rejected(verifier, ec_key):
    reject(verifier, bearer(es384(ec_key, typ="at+jwt")))


def test_crit_header_is_rejected(verifier, ec_key):
    reject(verifier, bearer(es384(ec_key, crit=["exp"])))


# --------------------------------------------------------------------------
# rejected: keys


def test_unknown_kid_refetches_then_is_rate_limited_by_a_token_bucket(verifier, ec_key, other_ec_key, server, clock):
    # the fixture's verifier: a burst of 2 refreshes per URL, one more every 30 s
    verifier.verify(bearer(es384(ec_key)), audience=AUD)
    assert server.request_count(JWKS_PATH) == 1
    clock.advance(31)

    def unknown() -> str:
        return jwt.encode(claims(), other_ec_key, algorithm="ES384", headers={"kid": "nobody-knows"})

    err = reject(verifier, bearer(unknown()))
    assert "kid" in err.reason
    assert server.request_count(JWKS_PATH) == 2  # refetched
    clock.advance(1)
    reject(verifier, bearer(unknown()))
    assert server.request_count(JWKS_PATH) == 3  # the burst's second token
    for _ in range(5):
        clock.advance(1)
        reject(verifier, bearer(unknown()))
    assert server.request_count(JWKS_PATH) == 3  # rate-limited: the bucket is empty
    clock.advance(30)
    reject(verifier, bearer(unknown()))
    assert server.request_count(JWKS_PATH) == 4  # one token refilled
    reject(verifier, bearer(unknown()))
    assert server.request_count(JWKS_PATH) == 4
    # Known keys keep working without any fetch.
    verifier.verify(bearer(es384(ec_key)), audience=AUD)
    assert server.request_count(JWKS_PATH) == 4


def test_unknown_kid_under_concurrency_fetches_once(issuers, clock, other_ec_key, server):
    v = JwtVerifier(issuers, clock=clock)
    tokens = [
        bearer(jwt.encode(claims(), other_ec_key, algorithm="ES384", headers={"kid": f"k{i}"})) for i in range(20)
    ]

    def attempt(header: str) -> bool:
        try:
            v.verify(header, audience=AUD)
            return True
        except AuthenticationError:
            return False

    with ThreadPoolExecutor(8) as pool:
        assert not any(pool.map(attempt, tokens))
    assert 1 <= server.request_count(JWKS_PATH) <= 2  # one fetch shared by the waiters, at most the burst of 2
    v.close()


def test_wrong_key_signature_is_rejected(verifier, other_ec_key):
    # Right kid, but signed by somebody else's key.
    token = jwt.encode(claims(), other_ec_key, algorithm="ES384", headers={"kid": EC_KID})
    err = reject(verifier, bearer(token))
    assert "signature" in err.reason


def test_jwks_server_error_is_rejected(verifier, ec_key, server):
    server.set_raw(JWKS_PATH, b"oops", status=500)
    err = reject(verifier, bearer(es384(ec_key)))
    assert "JWKS" in err.reason


def test_jwks_not_json_or_not_a_jwk_set_is_rejected(verifier, ec_key, server, clock):
    server.set_raw(JWKS_PATH, b"<html>hello</html>")
    reject(verifier, bearer(es384(ec_key)))
    clock.advance(31)
    server.set_jwks(JWKS_PATH, {"not": "a jwks"})
    reject(verifier, bearer(es384(ec_key)))


def test_jwks_unreachable_is_rejected(ec_key, clock):
    with JwksServer() as dead:
        url = dead.url(JWKS_PATH)
    v = JwtVerifier([TrustedIssuer(iss=ISS, jwks_url=url)], clock=clock)
    reject(v, bearer(es384(ec_key)))
    v.close()


@pytest.mark.filterwarnings("ignore:The RSA key is")
def test_jwks_private_keys_and_weak_rsa_keys_are_ignored(verifier, server, rsa_key):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private_jwk = dict(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key, as_dict=True), kid="priv")
    server.set_jwks(JWKS_PATH, {"keys": [public_jwk(weak, "weak"), private_jwk]})
    reject(verifier, bearer(jwt.encode(claims(), weak, algorithm="RS256", headers={"kid": "weak"})))
    reject(verifier, bearer(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "priv"})))


def test_untrusted_iss_is_rejected_before_any_fetch(verifier, ec_key, server):
    evil = "https://evil.example"
    token = es384(ec_key, claims(iss=evil), jku=server.url(EVIL_PATH))
    err = reject(verifier, bearer(token))
    assert "trusted" in err.reason
    assert server.request_count() == 0


@pytest.mark.parametrize(
    "jku_path", [EVIL_PATH, JKU_PATH + "?x=1", "/ehr/rotating/jwks.json/../../evil/jwks.json"]
)
def test_jku_off_the_allow_list_is_never_fetched(verifier, other_ec_key, server, jku_path):
    server.set_jwks(EVIL_PATH, {"keys": [public_jwk(other_ec_key, "evil")]})
    jku = server.url(jku_path)
    token = jwt.encode(claims(), other_ec_key, algorithm="ES384", headers={"kid": "evil", "jku": jku})
    err = reject(verifier, bearer(token))
    assert "jku" in err.reason
    assert server.request_count() == 0
    assert server.request_count(EVIL_PATH) == 0


def test_jku_of_another_trusted_issuer_is_not_allowed(verifier, ec_key, server):
    # OTHER_ISS names ISS's jku: the allow-list is per issuer.
    token = es384(ec_key, claims(iss=OTHER_ISS, tenant="clinic-a"), jku=server.url(JKU_PATH))
    reject(verifier, bearer(token))
    assert server.request_count() == 0


# --------------------------------------------------------------------------
# rejected: claims


@pytest.mark.parametrize(
    "aud",
    [
        "https://cds.example.net/cds-services/other",
        AUD + "/",
        AUD.upper(),
        ["https://elsewhere.example"],
        [],
        123,
    ],
)
def test_wrong_aud_is_rejected(verifier, ec_key, aud):
    err = reject(verifier, bearer(es384(ec_key, claims(aud=aud))))
    assert "aud" in err.reason


def test_missing_aud_is_rejected(verifier, ec_key):
    reject(verifier, bearer(es384(ec_key, claims(aud=_DROP))))


def test_audience_argument_is_what_is_checked(verifier, ec_key):
    token = es384(ec_key)
    reject(verifier, bearer(token), audience="https://cds.example.net/cds-services")
    reject(verifier, bearer(token), audience="")


def test_expired_token_is_rejected(verifier, ec_key, clock):
    token = es384(ec_key)
    clock.advance(300 + 31)
    err = reject(verifier, bearer(token))
    assert "expired" in err.reason


def test_iat_in_the_future_is_rejected(verifier, ec_key):
    token = es384(ec_key, claims(iat=int(T0) + 120, exp=int(T0) + 400))
    err = reject(verifier, bearer(token))
    assert "iat" in err.reason
    # A little skew (inside the leeway) is fine.
    verifier.verify(bearer(es384(ec_key, claims(iat=int(T0) + 20))), audience=AUD)


def test_nbf_in_the_future_is_rejected(verifier, ec_key):
    reject(verifier, bearer(es384(ec_key, claims(nbf=int(T0) + 120))))


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "iss"])
def test_missing_required_claim_is_rejected(verifier, ec_key, claim):
    err = reject(verifier, bearer(es384(ec_key, claims(**{claim: _DROP}))))
    assert claim in err.reason or "trusted" in err.reason or "iss" in err.reason


@pytest.mark.parametrize(
    "override", [{"jti": ""}, {"jti": 42}, {"exp": "tomorrow"}, {"iat": True}, {"exp": [1]}]
)
def test_badly_typed_claims_are_rejected(verifier, ec_key, override):
    reject(verifier, bearer(es384(ec_key, claims(**override))))


def test_replayed_jti_is_rejected(verifier, ec_key, clock):
    token = es384(ec_key)
    verifier.verify(bearer(token), audience=AUD)
    err = reject(verifier, bearer(token))
    assert "replay" in err.reason
    # A new token reusing the jti (fresh signature) is a replay too.
    again = es384(ec_key, claims(jti=jwt.decode(token, options={"verify_signature": False})["jti"]))
    reject(verifier, bearer(again))
    # And still, just before exp + leeway.
    clock.advance(300 + 29)
    reject(verifier, bearer(token))


def test_rejected_token_does_not_consume_its_jti(verifier, ec_key):
    payload = claims()
    reject(verifier, bearer(es384(ec_key, payload)), audience="https://wrong.example")
    verifier.verify(bearer(es384(ec_key, payload)), audience=AUD)


def test_same_jti_from_two_issuers_does_not_collide(verifier, ec_key, server):
    server.set_jwks("/other/jwks.json", {"keys": [public_jwk(ec_key, EC_KID)]})
    verifier.verify(bearer(es384(ec_key, claims(jti="n-1"))), audience=AUD)
    verifier.verify(bearer(es384(ec_key, claims(jti="n-1", iss=OTHER_ISS, tenant="clinic-a"))), audience=AUD)


def test_concurrent_replay_accepts_exactly_once(verifier, ec_key):
    header = bearer(es384(ec_key))
    verifier.verify(bearer(es384(ec_key)), audience=AUD)  # warm the JWKS cache

    def attempt(_: int) -> bool:
        try:
            verifier.verify(header, audience=AUD)
            return True
        except AuthenticationError:
            return False

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(attempt, range(64))) == 1


def test_tampered_payload_is_rejected(verifier, ec_key):
    token = es384(ec_key, claims(sub="ehr-client-1"))
    header_b64, _, signature = token.split(".")
    tampered = b64url_json(claims(sub="admin"))
    err = reject(verifier, bearer(f"{header_b64}.{tampered}.{signature}"))
    assert "signature" in err.reason


def test_tampered_header_is_rejected(verifier, ec_key):
    token = es384(ec_key)
    _, payload_b64, signature = token.split(".")
    header_b64 = b64url_json({"alg": "ES384", "kid": EC_KID, "typ": "JWT", "x": 1})
    reject(verifier, bearer(f"{header_b64}.{payload_b64}.{signature}"))


@pytest.mark.parametrize("tenant", ["clinic-z", None, 7])
def test_wrong_or_missing_tenant_is_rejected(verifier, ec_key, server, tenant):
    server.set_jwks("/other/jwks.json", {"keys": [public_jwk(ec_key, EC_KID)]})
    payload = claims(iss=OTHER_ISS, tenant=tenant) if tenant is not None else claims(iss=OTHER_ISS)
    err = reject(verifier, bearer(es384(ec_key, payload)))
    assert "tenant" in err.reason


# --------------------------------------------------------------------------
# secrecy of the token


def _failure_tokens(ec_key, other_ec_key, server) -> list[str]:
    server.set_jwks(EVIL_PATH, {"keys": [public_jwk(other_ec_key, "evil")]})
    good = es384(ec_key)
    h, p, s = good.split(".")
    pem = ec_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_input = f"{b64url_json({'alg': 'HS256', 'kid': EC_KID})}.{b64url_json(claims())}"
    return [
        f"{b64url_json({'alg': 'none', 'kid': EC_KID})}.{b64url_json(claims())}.",
        f"{hs_input}.{b64url(hmac.new(pem, hs_input.encode(), hashlib.sha256).digest())}",
        jwt.encode(claims(), other_ec_key, algorithm="ES384", headers={"kid": "unknown-kid"}),
        es384(ec_key, claims(iss="https://evil.example")),
        jwt.encode(claims(), other_ec_key, algorithm="ES384", headers={"kid": "evil", "jku": server.url(EVIL_PATH)}),
        es384(ec_key, claims(aud="https://wrong.example")),
        es384(ec_key, claims(exp=int(T0) - 1000, iat=int(T0) - 2000)),
        es384(ec_key, claims(iat=int(T0) + 1000, exp=int(T0) + 2000)),
        es384(ec_key, claims(jti=_DROP)),
        f"{h}.{b64url_json(claims(sub='admin'))}.{s}",
        "aGVsbG8.d29ybGQ.c2ln",
        good,  # accepted once, then replayed
        good,
    ]


def test_token_never_appears_in_logs_or_errors(verifier, ec_key, other_ec_key, server, caplog):
    caplog.set_level(logging.DEBUG)  # root, everything: cds.auth, httpx, httpcore...
    tokens = _failure_tokens(ec_key, other_ec_key, server)
    errors: list[AuthenticationError] = []
    accepted = 0
    for token in tokens:
        try:
            verifier.verify(bearer(token), audience=AUD)
            accepted += 1
        except AuthenticationError as exc:
            errors.append(exc)
            assert exc.__cause__ is None
    assert accepted == 1 and len(errors) == len(tokens) - 1
    assert caplog.records, "expected the failures to be logged"
    assert any(r.name == "cds.auth" and r.levelno == logging.WARNING for r in caplog.records)
    logged = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    for token in tokens:
        # The whole token and each of its non-trivial parts.
        for fragment in [token, *(part for part in token.split(".") if len(part) >= 8)]:
            assert fragment not in logged
            for exc in errors:
                assert fragment not in str(exc)
                assert fragment not in repr(exc)
                assert fragment not in exc.reason


def test_reasons_are_logged_with_iss_and_kid(verifier, ec_key, caplog):
    caplog.set_level(logging.DEBUG, logger="cds.auth")
    reject(verifier, bearer(es384(ec_key, claims(aud="https://wrong.example"))))
    record = next(r for r in caplog.records if r.name == "cds.auth" and r.levelno == logging.WARNING)
    message = record.getMessage()
    assert "aud" in message and ISS in message and EC_KID in message


# --------------------------------------------------------------------------
# configuration


def write(tmp_path, content: Any, name: str = "issuers.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_load_trusted_issuers(tmp_path):
    path = write(
        tmp_path,
        {
            "issuers": [
                {"iss": ISS, "jwks_url": "https://ehr.example.org/jwks.json"},
                {
                    "iss": OTHER_ISS,
                    "jku": ["https://other.example/k1.json", "https://other.example/k2.json"],
                    "tenants": ["t1"],
                },
            ]
        },
    )
    loaded = load_trusted_issuers(path)
    assert loaded == (
        TrustedIssuer(iss=ISS, jwks_url="https://ehr.example.org/jwks.json"),
        TrustedIssuer(
            iss=OTHER_ISS,
            jku=("https://other.example/k1.json", "https://other.example/k2.json"),
            tenants=("t1",),
        ),
    )
    assert load_trusted_issuers(str(path)) == loaded
    JwtVerifier(loaded).close()


@pytest.mark.parametrize(
    "content,field",
    [
        ("{not json", "invalid JSON"),
        ([], "top level"),
        ({}, "issuers"),
        ({"issuers": {}}, "issuers"),
        ({"issuers": []}, "issuers"),
        ({"issuers": [], "extra": 1}, "extra"),
        ({"issuers": ["https://ehr"]}, "issuers[0]"),
        ({"issuers": [{"jwks_url": "https://e/j"}]}, "issuers[0].iss"),
        ({"issuers": [{"iss": "", "jwks_url": "https://e/j"}]}, "issuers[0].iss"),
        ({"issuers": [{"iss": "a"}]}, "issuers[0].jwks_url"),
        ({"issuers": [{"iss": "a", "jwks_url": "ftp://e/j"}]}, "issuers[0].jwks_url"),
        ({"issuers": [{"iss": "a", "jwks_url": "/relative"}]}, "issuers[0].jwks_url"),
        ({"issuers": [{"iss": "a", "jwks_uri": "https://e/j"}]}, "issuers[0].jwks_uri"),
        ({"issuers": [{"iss": "a", "jku": "https://e/j"}]}, "issuers[0].jku"),
        ({"issuers": [{"iss": "a", "jku": ["https://e/j", 3]}]}, "issuers[0].jku[1]"),
        ({"issuers": [{"iss": "a", "jku": []}]}, "issuers[0].jwks_url"),
        ({"issuers": [{"iss": "a", "jwks_url": "https://e/j", "tenants": "t"}]}, "issuers[0].tenants"),
        ({"issuers": [{"iss": "a", "jwks_url": "https://e/j", "tenants": [""]}]}, "issuers[0].tenants[0]"),
        (
            {"issuers": [{"iss": "a", "jwks_url": "https://e/j"}, {"iss": "a", "jwks_url": "https://e/k"}]},
            "issuers[1].iss",
        ),
    ],
)
def test_load_trusted_issuers_errors_name_file_and_field(tmp_path, content, field):
    path = write(tmp_path, content)
    with pytest.raises(ValueError) as info:
        load_trusted_issuers(path)
    message = str(info.value)
    assert str(path) in message
    assert field in message


def test_load_trusted_issuers_missing_file(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(ValueError, match="absent.json"):
        load_trusted_issuers(path)


def test_verifier_rejects_unusable_issuers():
    with pytest.raises(ValueError):
        JwtVerifier([TrustedIssuer(iss=ISS)])
    with pytest.raises(ValueError):
        JwtVerifier([TrustedIssuer(iss=ISS, jwks_url="https://a/j"), TrustedIssuer(iss=ISS, jwks_url="https://b/j")])


# --------------------------------------------------------------------------
# the replay store


def test_jti_store_detects_duplicates_and_forgets_after_expiry():
    clock = FakeClock()
    store = InMemoryJtiStore(max_per_issuer=10, clock=clock)
    assert store.check_and_add("a", T0 + 60) is True
    assert store.check_and_add("a", T0 + 60) is False
    assert store.check_and_add("b", T0 + 120) is True
    assert len(store) == 2
    clock.advance(61)
    assert "a" not in store and "b" in store
    assert store.check_and_add("a", T0 + 200) is True


def test_jti_store_is_bounded_and_evicts_expired_entries_first():
    clock = FakeClock()
    store = InMemoryJtiStore(max_per_issuer=3, clock=clock)
    for jti in ("a", "b", "c"):
        assert store.check_and_add(jti, T0 + 10)
    with pytest.raises(JtiStoreFull):
        store.check_and_add("d", T0 + 10)  # never forgets a live entry
    assert store.check_and_add("a", T0 + 10) is False
    clock.advance(11)
    assert store.check_and_add("d", T0 + 100) is True  # expired ones made room
    assert len(store) == 1


def test_full_store_fails_closed_in_the_verifier(issuers, clock, ec_key):
    v = JwtVerifier(issuers, clock=clock, jti_store=InMemoryJtiStore(max_per_issuer=1, clock=clock))
    v.verify(bearer(es384(ec_key)), audience=AUD)
    err = reject(v, bearer(es384(ec_key)))
    assert "replay store" in err.reason
    v.close()


def test_jti_store_is_thread_safe():
    store = InMemoryJtiStore(max_per_issuer=100_000)
    jtis = [f"jti-{i}" for i in range(2_000)]
    barrier = threading.Barrier(8)
    wins: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        mine = sum(store.check_and_add(j, 4_000_000_000.0) for j in jtis)
        with lock:
            wins.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(wins) == len(jtis)
    assert len(store) == len(jtis)


def test_custom_jti_store_is_used_and_its_failure_fails_closed(issuers, clock, ec_key):
    class Broken:
        def check_and_add(self, jti: str, expires_at: float) -> bool:
            raise ConnectionError("redis down")

    class Recording:
        def __init__(self) -> None:
            self.calls: list[tuple[str, float]] = []

        def check_and_add(self, jti: str, expires_at: float) -> bool:
            self.calls.append((jti, expires_at))
            return True

    broken = JwtVerifier(issuers, clock=clock, jti_store=Broken())
    assert "replay store" in reject(broken, bearer(es384(ec_key))).reason
    broken.close()
    rec = Recording()
    payload = claims()
    recording = JwtVerifier(issuers, clock=clock, jti_store=rec, leeway=30)
    recording.verify(bearer(es384(ec_key, payload)), audience=AUD)
    recording.close()
    assert rec.calls == [(json.dumps([ISS, payload["jti"]]), payload["exp"] + 30)]
