"""Per-issuer settings of the trusted-issuers file (issue 11 point 2): profiles, their defaults, explicit
keys winning, errors naming the file, the issuer and the key; the verifier's ``aud`` list."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cds.auth import AuthenticationError, JwtVerifier, TrustedIssuer, load_trusted_issuers
from cds.ehr_profiles import SANDBOX_JKU

try:
    from jwks_server import JwksServer
except ImportError:  # pragma: no cover
    from tests.jwks_server import JwksServer

ISS = "https://ehr.example.org"
JWKS = "https://ehr.example.org/jwks.json"


def write(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps(content))
    return path


def load_one(tmp_path: Path, **entry: Any) -> TrustedIssuer:
    (issuer,) = load_trusted_issuers(write(tmp_path, {"issuers": [{"iss": ISS, "jwks_url": JWKS, **entry}]}))
    return issuer


def test_without_new_keys_an_issuer_is_generic_as_before(tmp_path):
    issuer = load_one(tmp_path)
    assert issuer == TrustedIssuer(iss=ISS, jwks_url=JWKS)
    assert (issuer.profile, issuer.aud, issuer.fhir_servers, issuer.selection_behavior, issuer.app_context) == (
        "generic", (), None, None, True,
    )


def test_profile_defaults(tmp_path):
    assert load_one(tmp_path, profile="epic").selection_behavior == "any"
    oracle = load_one(tmp_path, profile="oracle")
    assert oracle.app_context is False and oracle.selection_behavior is None
    sandbox = load_trusted_issuers(write(tmp_path, {"issuers": [{"iss": "https://sandbox.cds-hooks.org", "profile": "sandbox"}]}))
    assert sandbox[0].jku == (SANDBOX_JKU,) and sandbox[0].jwks_url is None  # no key source needed: the profile's jku


def test_explicit_keys_win_over_the_profile(tmp_path):
    issuer = load_one(
        tmp_path, profile="epic", selection_behavior="at-most-one", app_context=False,
        aud=["epic-aud"], fhir_servers=["https://fhir.example.org/R4"],
    )
    assert issuer.selection_behavior == "at-most-one" and issuer.app_context is False
    assert issuer.aud == ("epic-aud",) and issuer.fhir_servers == ("https://fhir.example.org/R4",)
    sandbox = load_one(tmp_path, profile="sandbox", jku=["https://mirror.example.org/jwks.json"])
    assert sandbox.jku == ("https://mirror.example.org/jwks.json",)
    profile = issuer.ehr_profile
    assert (profile.name, profile.selection_behavior, profile.app_context) == ("epic", "at-most-one", False)


@pytest.mark.parametrize(
    "entry, field, words",
    [
        ({"profile": "cerner"}, "issuers[0].profile", ["generic", "epic", "oracle", "sandbox"]),
        ({"profile": 1}, "issuers[0].profile", []),
        ({"selection_behavior": "all"}, "issuers[0].selection_behavior", ["at-most-one", "any"]),
        ({"aud": "https://cds.example.org"}, "issuers[0].aud", ["list"]),
        ({"aud": []}, "issuers[0].aud", ["empty"]),
        ({"aud": ["ok", ""]}, "issuers[0].aud[1]", ["non-empty"]),
        ({"fhir_servers": ["https://fhir.example.org", "fhir.example.org"]}, "issuers[0].fhir_servers[1]", ["http(s) URL"]),
        ({"fhir_servers": []}, "issuers[0].fhir_servers", ["empty"]),
        ({"app_context": "no"}, "issuers[0].app_context", ["boolean"]),
        ({"fhir_server": ["https://x"]}, "issuers[0].fhir_server", ["unknown field", "fhir_servers"]),
    ],
)
def test_errors_name_the_file_the_issuer_and_the_key(tmp_path, entry, field, words):
    path = write(tmp_path, {"issuers": [{"iss": ISS, "jwks_url": JWKS, **entry}]})
    with pytest.raises(ValueError) as info:
        load_trusted_issuers(path)
    message = str(info.value)
    assert str(path) in message and f"{field} (iss '{ISS}'):" in message, message
    for word in words:
        assert word in message, (word, message)


def test_error_in_the_second_issuer_names_it(tmp_path):
    path = write(tmp_path, {"issuers": [
        {"iss": ISS, "jwks_url": JWKS},
        {"iss": "https://second.example.org", "jwks_url": JWKS, "profile": "epic", "selection_behavior": "some"},
    ]})
    with pytest.raises(ValueError, match=r"issuers\[1\]\.selection_behavior \(iss 'https://second.example.org'\)"):
        load_trusted_issuers(path)


# ---- the verifier's aud list (Epic sets aud by hand) ---------------------------------------------


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def server(key):
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "alg": "ES384", "use": "sig"})
    with JwksServer() as srv:
        srv.set_jwks("/jwks.json", {"keys": [jwk]})
        yield srv


def token(key, aud: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISS, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return "Bearer " + jwt.encode(payload, key, algorithm="ES384", headers={"kid": "k1", "typ": "JWT"})


ENDPOINT = "https://cds.example.org/cds-services/lbp-exercise-progression"


def test_configured_aud_values_replace_the_endpoint_url(key, server):
    verifier = JwtVerifier([TrustedIssuer(iss=ISS, jwks_url=server.url("/jwks.json"), aud=("by-hand", "https://cds.example.org"))])
    try:
        assert verifier.verify(token(key, "by-hand"), audience=ENDPOINT)["aud"] == "by-hand"
        assert verifier.verify(token(key, "https://cds.example.org"), audience=ENDPOINT)
        assert verifier.verify(token(key, ["other", "by-hand"]), audience=ENDPOINT)
        for aud in (ENDPOINT, "by-hand-2", ["other"]):
            with pytest.raises(AuthenticationError, match="aud"):
                verifier.verify(token(key, aud), audience=ENDPOINT)
    finally:
        verifier.close()


def test_without_aud_values_the_endpoint_url_is_the_aud(key, server):
    verifier = JwtVerifier([TrustedIssuer(iss=ISS, jwks_url=server.url("/jwks.json"))])
    try:
        assert verifier.verify(token(key, ENDPOINT), audience=ENDPOINT)
        with pytest.raises(AuthenticationError):
            verifier.verify(token(key, "by-hand"), audience=ENDPOINT)
        assert verifier.issuer(ISS) is not None and verifier.issuer("https://stranger") is None and verifier.issuer(3) is None
    finally:
        verifier.close()


# ---- a bad file stops the start-up with one line, never a traceback ---------------------------------


def test_create_app_refuses_a_bad_issuers_file_as_a_configuration_error(tmp_path):
    from conftest import make_settings

    from cds.config import ConfigError
    from cds.http import create_app

    path = write(tmp_path, {"issuers": [{"iss": ISS, "jwks_url": JWKS, "profile": "cerner"}]})
    with pytest.raises(ConfigError, match=r"^CDS_TRUSTED_ISSUERS: trusted issuers file .*issuers\[0\]\.profile \(iss"):
        create_app(make_settings(auth=True, trusted_issuers=path))


def test_cds_run_reports_a_bad_issuers_file_in_one_line(tmp_path):
    """In a subprocess: ``cds run`` configures the process's logging, which must not leak into other tests."""
    import os
    import subprocess
    import sys

    from conftest import ROOT, RULES_DIR

    path = write(tmp_path, {"issuers": [{"iss": ISS, "jwks_url": JWKS, "aud": []}]})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update({"CDS_AUTH": "on", "CDS_TRUSTED_ISSUERS": str(path), "CDS_DATABASE_URL": "",
                "CDS_RULES_DIR": str(RULES_DIR), "CDS_RULES_POLL_SECONDS": "0", "CDS_PORT": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))})
    done = subprocess.run([sys.executable, "-m", "cds", "run", "--dev"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("configuration error:")]  # the rest: JSON logs
    assert line.startswith("configuration error: CDS_TRUSTED_ISSUERS: trusted issuers file ") and "issuers[0].aud" in line
