"""Issue 12 point 4, tokens: maximum lifetime, the replay store bounded per issuer, the database store as
the default (replay protection survives a restart), 503 when the replay store cannot answer, JWKS
refreshes that never block a caller whose ``kid`` is cached, and https-only JWKS outside development.

Real signed tokens, verified against the loopback JWKS server (tests/jwks_server.py)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import jwt
import pytest
from conftest import error_issue, make_settings
from cryptography.hazmat.primitives.asymmetric import ec

from cds.auth import (
    AuthenticationError,
    AuthUnavailable,
    InMemoryJtiStore,
    JtiStoreFull,
    JwtVerifier,
    TrustedIssuer,
)
from cds.config import ConfigError, load_settings

try:
    from jwks_server import JwksServer
except ImportError:  # pragma: no cover
    from tests.jwks_server import JwksServer

ISS = "https://ehr.example.org"
OTHER_ISS = "https://other-ehr.example.org"
AUD = "https://cds.example.org/cds-services"
JWKS_PATH = "/ehr/jwks.json"
KID = "ehr-es384-1"
NEW_KID = "ehr-es384-2"
T0 = 1_750_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    out = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    out.update({"kid": kid, "alg": "ES384", "use": "sig"})
    return out


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def server(key):
    with JwksServer() as srv:
        srv.set_jwks(JWKS_PATH, {"keys": [jwk(key, KID)]})
        yield srv


@pytest.fixture
def issuers(server) -> list[TrustedIssuer]:
    return [TrustedIssuer(iss=ISS, jwks_url=server.url(JWKS_PATH)), TrustedIssuer(iss=OTHER_ISS, jwks_url=server.url(JWKS_PATH))]


def token(key, now: float, *, kid: str = KID, iss: str = ISS, aud: str = AUD, lifetime: float = 300, **claims: Any) -> str:
    payload: dict[str, Any] = {"iss": iss, "aud": aud, "iat": int(now), "exp": int(now + lifetime), "jti": str(uuid.uuid4())}
    payload.update(claims)
    return "Bearer " + jwt.encode(payload, key, algorithm="ES384", headers={"kid": kid, "typ": "JWT"})


def reject(verifier: JwtVerifier, header: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(header, audience=AUD)
    return info.value


# --------------------------------------------------------------------------------------------------
# maximum lifetime


def test_a_ten_year_token_is_rejected_and_epics_fifteen_minutes_are_accepted(issuers, key):
    clock = FakeClock()
    v = JwtVerifier(issuers, clock=clock, leeway=30)
    assert "lifetime" in reject(v, token(key, T0, lifetime=10 * 365 * 86400)).reason
    v.verify(token(key, T0, lifetime=900), audience=AUD)  # Epic: exp = iat + 900 s
    v.verify(token(key, T0, lifetime=930), audience=AUD)  # within the leeway
    assert "lifetime" in reject(v, token(key, T0, lifetime=932)).reason
    v.close()


def test_both_exp_minus_iat_and_exp_minus_now_are_bounded(issuers, key):
    clock = FakeClock()
    v = JwtVerifier(issuers, clock=clock, leeway=30, max_lifetime=900)
    # iat long ago, exp still ahead: exp - iat too long although exp - now is short
    assert "exp - iat" in reject(v, token(key, T0, iat=int(T0) - 3000, exp=int(T0) + 60)).reason
    # iat ahead of our clock (within the leeway), exp - iat within the bound, but exp - now beyond it
    assert "maximum lifetime" in reject(v, token(key, T0, iat=int(T0) + 30, exp=int(T0) + 960)).reason
    v.verify(token(key, T0, iat=int(T0) + 30, exp=int(T0) + 930), audience=AUD)
    v.close()


def test_the_maximum_lifetime_is_configurable(issuers, key):
    v = JwtVerifier(issuers, clock=FakeClock(), leeway=0, max_lifetime=60)
    assert "lifetime" in reject(v, token(key, T0, lifetime=300)).reason
    v.verify(token(key, T0, lifetime=60), audience=AUD)
    v.close()
    assert load_settings({}, serving=False).jwt_max_lifetime == 900
    assert load_settings({"CDS_JWT_MAX_LIFETIME": "120"}, serving=False).jwt_max_lifetime == 120
    with pytest.raises(ConfigError, match="CDS_JWT_MAX_LIFETIME"):
        load_settings({"CDS_JWT_MAX_LIFETIME": "0"}, serving=False)


# --------------------------------------------------------------------------------------------------
# the memory replay store, bounded per issuer


def test_the_memory_store_bound_is_per_issuer_and_never_evicts_a_live_entry():
    clock = FakeClock()
    store = InMemoryJtiStore(max_per_issuer=2, clock=clock)
    assert store.check_and_add("a1", T0 + 60, issuer="a")
    assert store.check_and_add("a2", T0 + 120, issuer="a")
    with pytest.raises(JtiStoreFull):
        store.check_and_add("a3", T0 + 60, issuer="a")
    assert store.check_and_add("b1", T0 + 60, issuer="b")  # another issuer is not affected
    assert store.check_and_add("a1", T0 + 60, issuer="a") is False  # still remembered
    assert store.live_for("a") == 2 and store.live_for("b") == 1
    clock.advance(61)  # a1 and b1 expire: room for a again
    assert store.live_for("a") == 1 and store.live_for("b") == 0
    assert store.check_and_add("a3", T0 + 200, issuer="a")
    with pytest.raises(JtiStoreFull):
        store.check_and_add("a4", T0 + 200, issuer="a")


def test_an_issuer_at_its_bound_gets_unavailable_and_another_issuer_goes_on(issuers, key):
    clock = FakeClock()
    v = JwtVerifier(issuers, clock=clock, jti_store=InMemoryJtiStore(max_per_issuer=3, clock=clock))
    used = [token(key, T0) for _ in range(3)]
    for header in used:
        v.verify(header, audience=AUD)
    err = reject(v, token(key, T0))
    assert isinstance(err, AuthUnavailable) and "full" in err.reason
    assert not isinstance(reject(v, used[0]), AuthUnavailable)  # a replay is still a replay (401)
    for _ in range(3):
        v.verify(token(key, T0, iss=OTHER_ISS), audience=AUD)  # never locked out by the first issuer
    clock.advance(300 + 30 + 1)  # the first issuer's tokens expired (exp + leeway)
    v.verify(token(key, clock.now), audience=AUD)
    v.close()


# --------------------------------------------------------------------------------------------------
# over HTTP: default database store (restart), 503


@pytest.fixture
def issuers_file(tmp_path, server):
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps({"issuers": [
        {"iss": ISS, "jwks_url": server.url(JWKS_PATH)},
        {"iss": OTHER_ISS, "jwks_url": server.url(JWKS_PATH)},
    ]}))
    return path


def _client(issuers_file, **settings: Any):
    from cds.http import create_app

    values: dict[str, Any] = {"auth": True, "trusted_issuers": issuers_file, "public_base_url": "https://cds.example.org"}
    values.update(settings)
    return create_app(make_settings(**values)).test_client()


def _get(client, header: str):
    return client.get("/cds-services", headers={"Authorization": header})


def test_with_a_database_a_used_token_is_refused_after_a_restart(tmp_path, issuers_file, key):
    url = f"sqlite:///{tmp_path / 'cds.db'}"  # no CDS_JTI_STORE: the database is the default
    before = _client(issuers_file, database_url=url)
    header = token(key, time.time())
    assert _get(before, header).status_code == 200
    after = _client(issuers_file, database_url=url)  # a new process (restart, kill -HUP) on the same database
    assert _get(after, header).status_code == 401
    assert _get(after, token(key, time.time())).status_code == 200


def test_an_issuer_at_its_bound_gets_503_and_the_other_issuer_200(issuers_file, key):
    client = _client(issuers_file, jti_store="memory", jti_max_per_issuer=1)
    assert _get(client, token(key, time.time())).status_code == 200
    response = _get(client, token(key, time.time()))
    assert response.status_code == 503
    assert error_issue(response)["code"] == "transient"
    assert response.headers.get("Retry-After")
    assert _get(client, token(key, time.time(), iss=OTHER_ISS)).status_code == 200


# --------------------------------------------------------------------------------------------------
# JWKS: no caller with a cached kid waits for a slow refresh


def _timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def test_a_slow_jwks_does_not_delay_calls_whose_kid_is_cached(server, issuers, key, new_key):
    v = JwtVerifier(issuers, min_refresh_interval=10)
    v.verify(token(key, time.time()), audience=AUD)  # warm: the JWKS is cached
    server.set_jwks(JWKS_PATH, {"keys": [jwk(key, KID), jwk(new_key, NEW_KID)]})
    server.set_delay(JWKS_PATH, 3.0)
    unknown: dict[str, Any] = {}

    def unknown_kid_call() -> None:
        start = time.monotonic()
        try:
            v.verify(token(new_key, time.time(), kid=NEW_KID), audience=AUD)
            unknown["outcome"] = "accepted"
        except AuthenticationError as exc:
            unknown["outcome"] = exc.reason
        unknown["elapsed"] = time.monotonic() - start

    waiting = threading.Thread(target=unknown_kid_call)
    waiting.start()
    deadline = time.monotonic() + 2
    while server.request_count(JWKS_PATH) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.request_count(JWKS_PATH) == 2  # the refresh for the unknown kid is under way
    slowest = max(_timed(lambda: v.verify(token(key, time.time()), audience=AUD)) for _ in range(5))
    assert slowest < 1.0  # vs a 3 s JWKS: cached-kid calls do not wait for the refresh
    waiting.join(10)
    # the unknown-kid caller waited at most the short timeout (2 s), not the whole 3 s fetch
    assert unknown["outcome"] == "kid not found in the issuer's JWKS"
    assert 1.5 <= unknown["elapsed"] < 2.9
    time.sleep(1.5)  # the refresh completes in the background ...
    v.verify(token(new_key, time.time(), kid=NEW_KID), audience=AUD)  # ... and its keys are used
    assert server.request_count(JWKS_PATH) == 2
    v.close()


def test_a_stale_jwks_is_refreshed_in_the_background(server, issuers, key):
    clock = FakeClock(time.time())
    v = JwtVerifier(issuers, clock=clock)
    v.verify(token(key, clock.now), audience=AUD)
    server.set_delay(JWKS_PATH, 3.0)
    clock.advance(3601)  # older than max_age: due for a refresh
    elapsed = _timed(lambda: v.verify(token(key, clock.now), audience=AUD))
    assert elapsed < 1.0  # the stale keys stay in use while the slow refresh runs
    deadline = time.monotonic() + 2
    while server.request_count(JWKS_PATH) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.request_count(JWKS_PATH) == 2
    v.close()


# --------------------------------------------------------------------------------------------------
# https-only JWKS outside development


def test_require_https_refuses_a_plain_http_jwks_url():
    with pytest.raises(ValueError, match="not https"):
        JwtVerifier([TrustedIssuer(iss=ISS, jwks_url="http://ehr.example.org/jwks.json")], require_https=True)
    with pytest.raises(ValueError, match="not https"):
        JwtVerifier(
            [TrustedIssuer(iss=ISS, jwks_url="https://ehr.example.org/jwks.json", jku=("http://ehr.example.org/k",))],
            require_https=True,
        )
    JwtVerifier([TrustedIssuer(iss=ISS, jwks_url="https://ehr.example.org/jwks.json")], require_https=True).close()


def test_outside_development_a_plain_http_jwks_is_a_config_error(tmp_path):
    from cds.http.security import build_verifier

    path = tmp_path / "issuers.json"
    path.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks_url": "http://ehr.example.org/jwks.json"}]}))
    env = {"CDS_AUTH": "on", "CDS_TRUSTED_ISSUERS": str(path), "CDS_DATABASE_URL": ""}
    with pytest.raises(ConfigError, match="CDS_TRUSTED_ISSUERS.*not https.*CDS_ALLOW_HTTP_JWKS"):
        build_verifier(load_settings(env, serving=False))
    build_verifier(load_settings({**env, "CDS_ALLOW_HTTP_JWKS": "1"}, serving=False)).close()  # type: ignore[union-attr]
    build_verifier(load_settings(env, serving=False, development=True)).close()  # type: ignore[union-attr]
