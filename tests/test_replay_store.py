"""The database replay store (``CDS_JTI_STORE=database``, issue 6): a JWT ``jti`` is accepted once across
every instance sharing the database, until the token expires.

On a temporary SQLite file always, on PostgreSQL too when CDS_TEST_DATABASE_URL is set (a fresh schema per
test, dropped afterwards), as in test_storage.py. The HTTP tests run two apps on one database with auth on
and a loopback JWKS server (tests/jwks_server.py), as test_auth_http.py does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import time
import uuid
from typing import Any

import jwt
import pytest
from conftest import error_issue, make_settings, with_directory
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, inspect, text

from cds.auth import AuthenticationError, AuthUnavailable, InMemoryJtiStore, JtiStore, JwtVerifier, TrustedIssuer
from cds.config import ConfigError, load_settings
from cds.storage import PgSettings, SqlJtiStore, Store, StoreUnavailable, current_revision, downgrade, upgrade
from cds.storage.engine import WATCHDOG

try:
    from jwks_server import JwksServer
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests.jwks_server import JwksServer

PG_URL = os.environ.get("CDS_TEST_DATABASE_URL")
UTC = dt.timezone.utc
T0 = 1_800_000_000.0  # epoch seconds


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def db_url(empty_db_url):
    """URL of an empty database (not migrated), SQLite or PostgreSQL (conftest)."""
    return with_directory(empty_db_url)


@pytest.fixture
def migrated(db_url):
    upgrade(db_url)
    return db_url


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def replay(migrated, clock):
    s = SqlJtiStore(migrated, clock=clock)
    yield s
    s.close()


def key(iss: str = "https://ehr.example.org", jti: str | None = None) -> str:
    """The verifier's replay key for (iss, jti)."""
    return json.dumps([iss, jti or str(uuid.uuid4())])


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------------
# the store


def test_it_is_a_jti_store(replay):
    assert isinstance(replay, JtiStore)


def test_a_new_jti_is_accepted_and_its_replay_refused(replay, clock):
    k = key()
    assert replay.check_and_add(k, clock.now + 300) is True
    assert replay.check_and_add(k, clock.now + 300) is False
    assert replay.check_and_add(k, clock.now + 9999) is False  # a later exp does not reopen it
    assert replay.check_and_add(key(), clock.now + 300) is True


def test_the_same_jti_from_two_issuers_does_not_collide(replay, clock):
    jti = str(uuid.uuid4())
    assert replay.check_and_add(key("https://a.example.org", jti), clock.now + 300)
    assert replay.check_and_add(key("https://b.example.org", jti), clock.now + 300)


def test_an_entry_is_refused_until_it_expires_then_reusable(replay, clock):
    k = key()
    assert replay.check_and_add(k, clock.now + 300)
    clock.now += 299
    assert not replay.check_and_add(k, clock.now + 300)
    clock.now += 1  # expires_at reached
    assert replay.check_and_add(k, clock.now + 300)  # the expired row is replaced ...
    assert not replay.check_and_add(k, clock.now + 300)  # ... and the new one is live
    assert replay.count() == 1


def test_the_table_holds_a_hash_never_the_jti(replay, migrated, clock):
    jti = "nonce-" + uuid.uuid4().hex
    k = key(jti=jti)
    replay.check_and_add(k, clock.now + 300)
    engine = create_engine(migrated)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT key_hash, expires_at FROM jwt_replay")).all()
    finally:
        engine.dispose()
    assert [r[0] for r in rows] == [hashlib.sha256(k.encode()).hexdigest()]
    assert jti not in repr(rows)


def test_expired_entries_are_purged_every_n_accepted_keys(migrated, clock):
    s = SqlJtiStore(migrated, clock=clock, purge_every=5)
    for _ in range(4):
        assert s.check_and_add(key(), clock.now + 10)
    assert s.count() == 4
    clock.now += 10  # all four expire
    assert s.check_and_add(key(), clock.now + 10)  # 5th accepted key: purge runs
    assert s.count() == 1
    s.close()


def test_store_purge_drops_expired_replay_entries(migrated):
    now = time.time()
    s = SqlJtiStore(migrated)  # real clock: Store.purge uses "now"
    assert s.check_and_add(key(), now + 3600)
    s2 = SqlJtiStore(migrated, clock=lambda: now - 7200)
    assert s2.check_and_add(key(), now - 3600)  # expired an hour ago
    store = Store(migrated)
    result = store.purge(dt.datetime(2000, 1, 1, tzinfo=UTC))  # audit cutoff does not matter here
    assert (result.evaluations, result.feedback, result.replay_entries) == (0, 0, 1)
    assert store.count("jwt_replay") == 1
    for x in (s, s2, store):
        x.close()


def test_far_future_expiry_is_kept(replay, clock):
    k = key()
    assert replay.check_and_add(k, 1e300)
    clock.now = 1e11  # year 5138
    assert not replay.check_and_add(k, 1e300)


# ---------------------------------------------------------------------------------------------------
# migration 0002


def test_migration_0002_upgrade_and_downgrade(db_url):
    upgrade(db_url, "0001_initial")
    assert current_revision(db_url) == "0001_initial"
    assert "jwt_replay" not in table_names(db_url)
    upgrade(db_url, "0002_jwt_replay")
    assert current_revision(db_url) == "0002_jwt_replay"
    assert "jwt_replay" in table_names(db_url)
    assert SqlJtiStore(db_url).check_and_add(key(), time.time() + 60)
    downgrade(db_url, "0001_initial")
    assert current_revision(db_url) == "0001_initial"
    names = table_names(db_url)
    assert "jwt_replay" not in names and "feedback" in names  # only 0002's table goes
    upgrade(db_url)
    assert SqlJtiStore(db_url).ping()


# ---------------------------------------------------------------------------------------------------
# database down: fail closed


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_not_migrated_is_unavailable(db_url):
    s = SqlJtiStore(db_url)
    assert s.ping() is False
    with pytest.raises(StoreUnavailable):
        s.check_and_add(key(), time.time() + 60)
    s.close()


def test_sqlite_unreachable_is_unavailable(tmp_path):
    s = SqlJtiStore(f"sqlite:///{tmp_path / 'no-such-dir' / 'cds.db'}")
    with pytest.raises(StoreUnavailable):
        s.check_and_add(key(), time.time() + 60)


def test_postgresql_unreachable_is_unavailable():
    pytest.importorskip("psycopg")
    s = SqlJtiStore(f"postgresql+psycopg://cds:cds@127.0.0.1:{_closed_port()}/cds")
    with pytest.raises(StoreUnavailable):
        s.check_and_add(key(), time.time() + 60)


# ---------------------------------------------------------------------------------------------------
# PostgreSQL: one prepared statement per check (issue 13), and recovery from dropped connections


@pytest.fixture
def pg_replay(clock, request):
    if not PG_URL:
        pytest.skip("CDS_TEST_DATABASE_URL not set")
    pytest.importorskip("psycopg")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    upgrade(url)
    s = SqlJtiStore(url, clock=clock, pg=getattr(request, "param", None))
    try:
        yield s, admin, schema
    finally:
        s.close()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_postgresql_check_is_one_statement_without_sqlalchemy_or_a_transaction(pg_replay, clock):
    from sqlalchemy import event

    replay, admin, schema = pg_replay
    assert replay.check_and_add(key(), clock.now + 300)  # warm: the store's connection is checked out once
    seen: list[str] = []
    event.listen(replay.engine, "checkout", lambda *a: seen.append("checkout"))
    event.listen(replay.engine, "before_cursor_execute", lambda conn, cur, stmt, *a: seen.append(stmt))
    event.listen(replay.engine, "begin", lambda conn: seen.append("BEGIN"))
    k = key()
    assert [replay.check_and_add(k, clock.now + 300) for _ in range(3)] == [True, False, False]
    assert seen == []  # no pool checkout (no ping), no BEGIN/COMMIT, no compiled SQLAlchemy statement
    with admin.connect() as conn:  # autocommit: the connection is never left inside a transaction
        states = conn.execute(text(
            "SELECT state FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query LIKE 'INSERT INTO jwt_replay%'"
        )).scalars().all()
    assert states and all(state == "idle" for state in states)
    assert replay.count() == 2


def test_postgresql_connections_killed_by_the_server_are_replaced(pg_replay, clock):
    replay, admin, schema = pg_replay
    k = key()
    assert replay.check_and_add(k, clock.now + 300)
    with admin.connect() as conn:  # what a server restart does to every idle connection
        killed = conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND query LIKE 'INSERT INTO jwt_replay%'"
        )).scalar_one()
    assert killed >= 1
    assert replay.check_and_add(key(), clock.now + 300) is True  # retried once on a fresh connection
    assert replay.check_and_add(k, clock.now + 300) is False  # and the replay is still refused


@pytest.mark.parametrize("pg_replay", [PgSettings(statement_timeout_s=0.5)], indirect=True)
def test_postgresql_backend_hung_the_check_does_not_hang(pg_replay, clock):
    """SIGSTOP on the server process of the store's connection: the watchdog cuts it at the deadline
    (statement timeout + 2 s) and the check is answered on a fresh connection."""
    replay, admin, schema = pg_replay
    assert replay.check_and_add(key(), clock.now + 300)
    with admin.connect() as conn:
        pid = conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query LIKE 'INSERT INTO jwt_replay%'"
        )).scalar_one()
    try:
        os.kill(pid, signal.SIGSTOP)
    except PermissionError:
        pytest.skip("cannot signal the PostgreSQL server here")
    before = WATCHDOG.expired
    started = time.monotonic()
    k = key()
    try:
        fresh = replay.check_and_add(k, clock.now + 300)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert time.monotonic() - started < 6
    assert fresh is True and WATCHDOG.expired == before + 1
    assert replay.check_and_add(k, clock.now + 300) is False


# ---------------------------------------------------------------------------------------------------
# two processes racing for the same jti values


N_KEYS = 100


def _racer(url: str, barrier, results) -> None:
    s = SqlJtiStore(url)
    keys = [key(jti=f"race-{i}") for i in range(N_KEYS)]
    expires = time.time() + 600
    barrier.wait(timeout=60)
    results.put([s.check_and_add(k, expires) for k in keys])
    s.close()


def test_two_processes_racing_for_a_jti_accept_it_exactly_once(migrated):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(migrated, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert all(len(r) == N_KEYS for r in got)
    assert [a + b for a, b in zip(*got, strict=True)] == [1] * N_KEYS  # exactly one True per jti


# ---------------------------------------------------------------------------------------------------
# configuration


def test_cds_jti_store_setting():
    # unset: the database whenever one is configured (replay protection survives restarts), else memory
    assert load_settings({}, serving=False).jti_store == "database"
    assert load_settings({"CDS_DATABASE_URL": ""}, serving=False).jti_store == "memory"
    assert load_settings({"CDS_JTI_STORE": " "}, serving=False).jti_store == "database"
    assert load_settings({"CDS_JTI_STORE": "memory"}, serving=False).jti_store == "memory"
    assert make_settings().jti_store == "memory"  # the tests' settings have no database
    assert load_settings({"CDS_JTI_STORE": "Database"}, serving=False).jti_store == "database"
    with pytest.raises(ConfigError, match="CDS_JTI_STORE"):
        load_settings({"CDS_JTI_STORE": "redis"}, serving=False)


def test_database_store_without_a_database_url_is_a_config_error():
    with pytest.raises(ConfigError, match="CDS_JTI_STORE.*CDS_DATABASE_URL"):
        load_settings({"CDS_JTI_STORE": "database", "CDS_DATABASE_URL": ""})


def test_build_verifier_uses_the_configured_store(tmp_path):
    from cds.http.security import build_verifier

    url = f"sqlite:///{tmp_path / 'x.db'}"
    memory = build_verifier(make_settings(auth=True, database_url=url, jti_store="memory"))
    default = build_verifier(make_settings(auth=True, database_url=url))
    assert isinstance(default._jti_store, SqlJtiStore)
    database = build_verifier(make_settings(auth=True, database_url=url, jti_store="database"))
    assert isinstance(memory._jti_store, InMemoryJtiStore)
    assert isinstance(database._jti_store, SqlJtiStore)
    assert database._jti_store.engine.url.render_as_string(hide_password=False) == url


# ---------------------------------------------------------------------------------------------------
# over HTTP: two instances, one database

ISS = "https://ehr.example.org"
PUBLIC_BASE = "https://cds.example.org"
JWKS_PATH = "/ehr/jwks.json"
KID = "ehr-es384-1"
DISCOVERY = "/cds-services"


@pytest.fixture(scope="module")
def ehr_key():
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def jwks(ehr_key):
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ehr_key.public_key()))
    jwk.update({"kid": KID, "alg": "ES384", "use": "sig"})
    with JwksServer() as server:
        server.set_jwks(JWKS_PATH, {"keys": [jwk]})
        yield server


@pytest.fixture
def make_instance(tmp_path, jwks):
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks_url": jwks.url(JWKS_PATH)}]}))

    def make(database_url: str, jti_store: str = "database"):
        from cds.http import create_app

        settings = make_settings(
            auth=True,
            trusted_issuers=issuers,
            public_base_url=PUBLIC_BASE,
            database_url=database_url,
            jti_store=jti_store,
        )
        return create_app(settings).test_client()

    return make


def token(ehr_key, path: str = DISCOVERY, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISS, "aud": PUBLIC_BASE + path, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    payload.update(claims)
    return jwt.encode(payload, ehr_key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})


def call(client, tok: str):
    return client.get(DISCOVERY, headers={"Authorization": f"Bearer {tok}"})


def test_verifier_fails_closed_when_the_store_is_down(tmp_path, jwks, ehr_key):
    verifier = JwtVerifier(
        [TrustedIssuer(iss=ISS, jwks_url=jwks.url(JWKS_PATH))],
        jti_store=SqlJtiStore(f"sqlite:///{tmp_path / 'missing' / 'cds.db'}"),
    )
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(f"Bearer {token(ehr_key)}", PUBLIC_BASE + DISCOVERY)
    assert isinstance(info.value, AuthUnavailable)
    assert info.value.reason == "replay store unavailable (StoreUnavailable)"
    verifier.close()


def test_a_token_accepted_by_one_instance_is_refused_by_the_other(make_instance, migrated, ehr_key):
    a, b = make_instance(migrated), make_instance(migrated)
    tok = token(ehr_key)
    assert call(a, tok).status_code == 200
    assert call(b, tok).status_code == 401
    assert call(a, tok).status_code == 401
    other = token(ehr_key)
    assert call(b, other).status_code == 200  # b works; it only refuses what a already accepted
    assert call(a, other).status_code == 401


def test_with_the_memory_store_each_instance_only_knows_its_own_tokens(make_instance, tmp_path, ehr_key):
    """Why the database store exists: per-process stores let a token through once per instance."""
    url = f"sqlite:///{tmp_path / 'mem.db'}"
    a, b = make_instance(url, "memory"), make_instance(url, "memory")
    tok = token(ehr_key)
    assert call(a, tok).status_code == 200
    assert call(b, tok).status_code == 200
    assert call(a, tok).status_code == 401


def test_replay_store_database_down_is_503_not_401(make_instance, tmp_path, ehr_key, caplog):
    d = tmp_path / "db"
    d.mkdir()
    client = make_instance(f"sqlite:///{d / 'cds.db'}")  # migrated by create_app (SQLite)
    shutil.rmtree(d)  # the database goes away before the first call
    with caplog.at_level(logging.WARNING, logger="cds.auth"):
        response = call(client, token(ehr_key))
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    issue = error_issue(response)
    assert issue["severity"] == "error" and issue["code"] == "transient"
    assert "WWW-Authenticate" not in response.headers
    assert any("replay store unavailable" in r.getMessage() for r in caplog.records)


def test_replay_store_postgresql_unreachable_is_503_not_401(make_instance, ehr_key):
    pytest.importorskip("psycopg")
    client = make_instance(f"postgresql+psycopg://cds:cds@127.0.0.1:{_closed_port()}/cds")
    assert call(client, token(ehr_key)).status_code == 503


def test_a_refused_token_does_not_consume_its_jti_in_the_database(make_instance, migrated, ehr_key):
    client = make_instance(migrated)
    jti = str(uuid.uuid4())
    assert call(client, token(ehr_key, path="/elsewhere", jti=jti)).status_code == 401  # wrong aud
    assert call(client, token(ehr_key, jti=jti)).status_code == 200
