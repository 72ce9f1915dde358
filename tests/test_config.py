"""Configuration (cds/config.py): every CDS_* variable is read, strictly, in one place.

A bad value stops `cds run` (and `cds evaluate`, `cds.wsgi`) with one line on stderr,
``configuration error: CDS_VARIABLE: what is wrong``, exit code 2 and no traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EVALUATION_DATE, EXAMPLES_DIR, ROOT, RULES_DIR

from cds.config import ENV, ConfigError, Settings, load_settings
from cds.errors import CdsError

KEY = "config-test-audit-key-0123456789"


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update(values)
    return env


def _cds(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cds", *args], cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=120
    )


def _assert_one_config_error(proc: subprocess.CompletedProcess[str], var: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"configuration error: {var}: "), lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------------
# start-up refuses bad values: one line naming the variable


@pytest.mark.parametrize(
    ("var", "value", "why"),
    [
        ("CDS_ALLOW_HTTP_FHIR", "maybe", "maybe"),
        ("CDS_AUTH", "maybe", "on or off"),
        ("CDS_EVALUATION_DATE", "2026-13-01", "month"),
        ("CDS_EVALUATION_DATE", "20.11.2026", "YYYY-MM-DD"),
        ("CDS_PORT", "eighty", "integer"),
    ],
)
@pytest.mark.parametrize("dev", [False, True], ids=["production", "dev"])
def test_cds_run_refuses_a_bad_value_in_one_line(tmp_path, var, value, why, dev):
    env = {var: value, "CDS_AUDIT_KEY": KEY, "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    proc = _cds("run", *(["--dev"] if dev else []), **env)
    assert why in _assert_one_config_error(proc, var)


def test_production_without_an_audit_key_is_one_configuration_line(tmp_path):
    proc = _cds("run", CDS_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    assert "required" in _assert_one_config_error(proc, "CDS_AUDIT_KEY")
    # nor from the WSGI entry point (the same loader)
    script = "import cds.wsgi"
    wsgi = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=_env(CDS_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}"))
    assert "required" in _assert_one_config_error(wsgi, "CDS_AUDIT_KEY")


def test_wsgi_refuses_a_bad_value_in_one_line():
    proc = subprocess.run([sys.executable, "-c", "import cds.wsgi"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=_env(CDS_AUTH="maybe", CDS_AUDIT_KEY=KEY))
    _assert_one_config_error(proc, "CDS_AUTH")


def test_a_short_audit_key_is_refused_in_one_line():
    _assert_one_config_error(_cds("run", CDS_AUDIT_KEY="short"), "CDS_AUDIT_KEY")


# ---------------------------------------------------------------------------------------------------
# every variable is read


VALUES = {
    "CDS_RULES_DIR": ("/srv/rules", Path("/srv/rules")),
    "CDS_EVALUATION_DATE": ("2026-02-03", dt.date(2026, 2, 3)),
    "CDS_HOST": ("0.0.0.0", "0.0.0.0"),
    "CDS_PORT": ("9090", 9090),
    "CDS_PUBLIC_BASE_URL": ("https://cds.example.org/", "https://cds.example.org"),
    "CDS_AUTH": ("off", False),
    "CDS_TRUSTED_ISSUERS": ("/etc/cds/issuers.json", Path("/etc/cds/issuers.json")),
    "CDS_ALLOW_HTTP_FHIR": ("1", True),
    "CDS_DATABASE_URL": ("postgresql+psycopg://cds@db/cds", "postgresql+psycopg://cds@db/cds"),
    "CDS_JTI_STORE": ("Database", "database"),
    "CDS_DATABASE_CONNECT_TIMEOUT": ("2", 2),
    "CDS_DATABASE_STATEMENT_TIMEOUT": ("0.75", 0.75),
    "CDS_DATABASE_POOL_TIMEOUT": ("3", 3.0),
    "CDS_DATABASE_KEEPALIVES_IDLE": ("15", 15),
    "CDS_DATABASE_KEEPALIVES_INTERVAL": ("4", 4),
    "CDS_DATABASE_KEEPALIVES_COUNT": ("6", 6),
    "CDS_AUDIT_SHUTDOWN_TIMEOUT": ("2.5", 2.5),
    "CDS_JTI_MAX_PER_ISSUER": ("500", 500),
    "CDS_JWT_MAX_LIFETIME": ("300", 300.0),
    "CDS_ALLOW_HTTP_JWKS": ("1", True),
    "CDS_CORS_ORIGINS": ("https://a.example, https://b.example", ("https://a.example", "https://b.example")),
    "CDS_MAX_BODY_BYTES": ("4096", 4096),
    "CDS_FETCH_CONNECT_TIMEOUT": ("0.25", 0.25),
    "CDS_FETCH_TOTAL_TIMEOUT": ("1.5", 1.5),
    "CDS_FETCH_MAX_PAGES": ("3", 3),
    "CDS_FETCH_CONNECTIONS_PER_HOST": ("2", 2),
    "CDS_MAX_ENTRIES_PER_KEY": ("50", 50),
    "CDS_AUDIT_KEY": (KEY, KEY),
    "CDS_AUDIT_RETENTION_DAYS": ("30", 30),
    "CDS_RULES_POLL_SECONDS": ("0", 0.0),
    "CDS_APP": ("off", False),
    "CDS_APP_CLIENT_ID": ("my-app", "my-app"),
    "CDS_APP_CLIENT_SECRET": ("s3cret", "s3cret"),
    "CDS_APP_FHIR_SERVERS": ('["https://ehr.example/fhir/", "https://b.example/r4"]', ("https://ehr.example/fhir", "https://b.example/r4")),
    "CDS_APP_SECRET": ("x" * 32, "x" * 32),
    "CDS_APP_FRAME_ANCESTORS": ("https://ehr.example, 'self'", ("https://ehr.example", "'self'")),
    "CDS_APP_DEMO": ("1", True),
    "CDS_APP_DEMO_DIR": ("/srv/examples", Path("/srv/examples")),
}


def test_the_table_covers_every_variable():
    assert set(VALUES) == set(ENV)
    assert set(ENV.values()) | {"development"} == set(Settings.model_fields)
    assert all(var == "CDS_" + field.upper() for var, field in ENV.items())


@pytest.mark.parametrize("var", sorted(VALUES))
def test_each_variable_is_read(var):
    raw, expected = VALUES[var]
    environ = {"CDS_AUDIT_KEY": KEY, var: raw}
    assert getattr(load_settings(environ), ENV[var]) == expected
    # over the development defaults too
    assert getattr(load_settings(environ, development=True), ENV[var]) == expected


def test_settings_read_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("CDS_PORT", "9191")
    monkeypatch.setenv("CDS_AUDIT_KEY", KEY)
    monkeypatch.setenv("CDS_WORKERS", "4")  # the image's gunicorn variables are not settings
    monkeypatch.setenv("CDS_DEVELOPMENT", "1")  # nor is development: only `cds run --dev`
    settings = load_settings()
    assert settings.port == 9191 and settings.development is False
    assert Settings().port == 9191


@pytest.mark.parametrize("raw", ["on", "ON", "1", "true", "yes"])
def test_booleans_on(raw):
    assert load_settings({"CDS_AUTH": raw, "CDS_ALLOW_HTTP_FHIR": raw}, serving=False).allow_http_fhir is True
    assert load_settings({"CDS_AUTH": raw}, serving=False).auth is True


@pytest.mark.parametrize("raw", ["off", "0", "false", "No"])
def test_booleans_off(raw):
    settings = load_settings({"CDS_AUTH": raw, "CDS_ALLOW_HTTP_FHIR": raw}, development=True)
    assert settings.auth is False and settings.allow_http_fhir is False


def test_defaults_production_and_development():
    prod = load_settings({}, serving=False)
    assert prod.auth is True and prod.allow_http_fhir is False and prod.evaluation_date is None
    assert prod.development is False and prod.cors_origins == ("*",) and prod.port == 8080
    dev = load_settings({}, development=True)
    assert dev.auth is False and dev.allow_http_fhir is True and dev.development is True
    assert dev.evaluation_date == EVALUATION_DATE
    assert dev.audit_key == ""  # development: a random key per process


def test_environment_wins_over_development_defaults_and_overrides_win_over_the_environment():
    dev = load_settings({"CDS_AUTH": "on", "CDS_EVALUATION_DATE": "today"}, development=True)
    assert dev.auth is True and dev.evaluation_date is None  # today
    assert load_settings({"CDS_PORT": "9000"}, development=True, port=9001).port == 9001


def test_empty_values_keep_their_meaning():
    settings = load_settings({"CDS_DATABASE_URL": "", "CDS_TRUSTED_ISSUERS": ""})
    assert settings.database_url == "" and settings.trusted_issuers is None  # no database: no audit key needed


@pytest.mark.parametrize(("base", "ok"), [
    ("https://cds.example.org", True), ("http://127.0.0.1:8080", True), ("http://localhost:8080", True),
    ("http://cds.example.org", False),
])
def test_an_app_framed_by_another_site_needs_an_https_public_url(base, ok):
    env = {"CDS_APP": "on", "CDS_APP_FRAME_ANCESTORS": "https://ehr.example.org", "CDS_PUBLIC_BASE_URL": base}
    if ok:
        assert load_settings(env, development=True).app_embedded_by_other_sites
        return
    with pytest.raises(ConfigError, match=r"^CDS_APP_FRAME_ANCESTORS: .*SameSite=None; Secure.*CDS_PUBLIC_BASE_URL"):
        load_settings(env, development=True)
    framed_by_itself = load_settings({**env, "CDS_APP_FRAME_ANCESTORS": "'self'"}, development=True)
    assert not framed_by_itself.app_embedded_by_other_sites  # a Lax cookie: plain http works (development)


def test_config_error_is_a_cds_error_naming_the_variable():
    with pytest.raises(ConfigError) as e:
        load_settings({"CDS_EVALUATION_DATE": "2026-13-01"})
    assert isinstance(e.value, CdsError)
    assert str(e.value).startswith("CDS_EVALUATION_DATE: ")
    with pytest.raises(ConfigError, match="CDS_AUDIT_KEY: required"):
        load_settings({})
    with pytest.raises(ConfigError, match="^CDS_FETCH_MAX_PAGES: "):
        load_settings({"CDS_FETCH_MAX_PAGES": "0"}, serving=False)
    with pytest.raises(ConfigError):
        load_settings({}, no_such_setting=1)


# ---------------------------------------------------------------------------------------------------
# cds evaluate reads the same settings


def _evaluate(request: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    return _cds("evaluate", str(request), "--format", "json", "--rules", str(RULES_DIR), *extra, **env)


def test_cds_evaluate_honours_cds_evaluation_date():
    request = sorted(p for p in (EXAMPLES_DIR / "requests").glob("*.json") if not p.name.endswith(".expected.json"))[0]
    proc = _evaluate(request, CDS_EVALUATION_DATE="2026-02-03")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["evaluationDate"] == "2026-02-03"
    today = _evaluate(request, CDS_EVALUATION_DATE="today")
    assert json.loads(today.stdout)["evaluationDate"] == dt.date.today().isoformat()
    assert json.loads(_evaluate(request, "--as-of", "2026-03-04", CDS_EVALUATION_DATE="2026-02-03").stdout)[
        "evaluationDate"
    ] == "2026-03-04"
    _assert_one_config_error(_evaluate(request, CDS_EVALUATION_DATE="2026-13-01"), "CDS_EVALUATION_DATE")
