"""Service configuration: environment variables (SPEC §4), over an embedded default.

Read and validated in one place: :class:`Settings` (pydantic-settings, prefix ``CDS_``). Every entry
point (``cds run``, ``cds evaluate``, the ``cds db``/``report`` tools, ``cds.wsgi``) goes through
:func:`load_settings`, which turns every problem into one :class:`ConfigError` whose message names the
variable (``CDS_EVALUATION_DATE: ...``).

Two embedded defaults exist: production (auth on) and development (``cds run --dev`` / ``make run``:
auth off, plain-http FHIR allowed, the bundled examples' evaluation date). Environment variables
always win over either; keyword overrides (tests) win over the environment.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import CdsError

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_CONFIG = REPO_ROOT / "fhir_examples" / "config.json"


class ConfigError(CdsError, ValueError):
    """A configuration value that cannot be used; the message names the variable."""


#: environment variable -> settings field (the variable is always ``CDS_`` + the field name, upper case)
ENV = {
    "CDS_RULES_DIR": "rules_dir",
    "CDS_EVALUATION_DATE": "evaluation_date",
    "CDS_HOST": "host",
    "CDS_PORT": "port",
    "CDS_PUBLIC_BASE_URL": "public_base_url",
    "CDS_AUTH": "auth",
    "CDS_TRUSTED_ISSUERS": "trusted_issuers",
    "CDS_ALLOW_HTTP_FHIR": "allow_http_fhir",
    "CDS_DATABASE_URL": "database_url",
    "CDS_JTI_STORE": "jti_store",
    "CDS_DATABASE_CONNECT_TIMEOUT": "database_connect_timeout",
    "CDS_DATABASE_STATEMENT_TIMEOUT": "database_statement_timeout",
    "CDS_DATABASE_POOL_TIMEOUT": "database_pool_timeout",
    "CDS_DATABASE_KEEPALIVES_IDLE": "database_keepalives_idle",
    "CDS_DATABASE_KEEPALIVES_INTERVAL": "database_keepalives_interval",
    "CDS_DATABASE_KEEPALIVES_COUNT": "database_keepalives_count",
    "CDS_AUDIT_SHUTDOWN_TIMEOUT": "audit_shutdown_timeout",
    "CDS_JTI_MAX_PER_ISSUER": "jti_max_per_issuer",
    "CDS_JWT_MAX_LIFETIME": "jwt_max_lifetime",
    "CDS_ALLOW_HTTP_JWKS": "allow_http_jwks",
    "CDS_CORS_ORIGINS": "cors_origins",
    "CDS_MAX_BODY_BYTES": "max_body_bytes",
    "CDS_FETCH_CONNECT_TIMEOUT": "fetch_connect_timeout",
    "CDS_FETCH_TOTAL_TIMEOUT": "fetch_total_timeout",
    "CDS_FETCH_MAX_PAGES": "fetch_max_pages",
    "CDS_FETCH_CONNECTIONS_PER_HOST": "fetch_connections_per_host",
    "CDS_MAX_ENTRIES_PER_KEY": "max_entries_per_key",
    "CDS_AUDIT_KEY": "audit_key",
    "CDS_AUDIT_RETENTION_DAYS": "audit_retention_days",
    "CDS_RULES_POLL_SECONDS": "rules_poll_seconds",
    # the SMART on FHIR app at /app/ (cds.http.smart_app; README "SMART app")
    "CDS_APP": "app",
    "CDS_APP_CLIENT_ID": "app_client_id",
    "CDS_APP_CLIENT_SECRET": "app_client_secret",
    "CDS_APP_FHIR_SERVERS": "app_fhir_servers",
    "CDS_APP_SECRET": "app_secret",
    "CDS_APP_FRAME_ANCESTORS": "app_frame_ancestors",
    "CDS_APP_DEMO": "app_demo",
    "CDS_APP_DEMO_DIR": "app_demo_dir",
}
_FIELD_TO_VAR = {f: v for v, f in ENV.items()}

_TRUE = ("1", "on", "true", "yes")
_FALSE = ("0", "off", "false", "no")


@dataclass(frozen=True)
class _Load:
    """What one :func:`load_settings` call reads (the sources cannot take arguments)."""

    environ: Mapping[str, str] | None = None  # None: os.environ
    defaults: dict[str, object] = field(default_factory=dict)
    serving: bool = True


_LOAD: ContextVar[_Load] = ContextVar("cds_config_load", default=_Load())  # noqa: B039 - never mutated, replaced per load


class _EnvSource(EnvSettingsSource):
    """The ``CDS_*`` variables of the ENV table, from a given mapping, as raw strings.

    Parsing (booleans, dates, the origin list) is the field validators' job, for the environment and
    the keyword overrides alike; the launcher's variables (``CDS_WORKERS``, ...) are :class:`ServerSettings`.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None) -> None:
        super().__init__(settings_cls)
        env = os.environ if environ is None else environ
        self.env_vars = {k.lower(): v for k, v in env.items() if k in ENV}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        var = _FIELD_TO_VAR.get(field_name)
        if var is None:
            return None, field_name, False
        return self.env_vars.get(var.lower()), var.lower(), False

    def prepare_field_value(self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool) -> Any:
        return value


class _DefaultsSource(PydanticBaseSettingsSource):
    """The embedded development defaults, below the environment."""

    def __init__(self, settings_cls: type[BaseSettings], defaults: dict[str, object]) -> None:
        super().__init__(settings_cls)
        self._defaults = defaults

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._defaults.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._defaults)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix="CDS_")

    rules_dir: Path = REPO_ROOT / "rules"
    evaluation_date: dt.date | None = None  # None: today
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_base_url: str = "http://127.0.0.1:8080"
    auth: bool = True
    trusted_issuers: Path | None = None
    allow_http_fhir: bool = False
    database_url: str = f"sqlite:///{Path.cwd() / 'var' / 'lbp-cds.sqlite3'}"
    # JWT replay store: per process ("memory") or the database at database_url, shared by every instance and
    # kept across restarts; unset: "database" whenever a database is configured, else "memory"
    jti_store: Literal["memory", "database"] | None = Field(default=None, validate_default=True)
    jti_max_per_issuer: int = Field(default=100_000, ge=1)  # live jtis per issuer in the memory store
    jwt_max_lifetime: float = Field(default=900, gt=0, le=86_400)  # seconds, bounds exp-iat and exp-now
    allow_http_jwks: bool = False  # plain-http jwks_url/jku (loopback tests); always allowed in development
    # PostgreSQL (docs/operations.md "Database"): seconds; a statement timeout of 0 means none
    database_connect_timeout: int = Field(default=5, ge=1)
    database_statement_timeout: float = Field(default=5.0, ge=0)
    database_pool_timeout: float = Field(default=5.0, gt=0)
    database_keepalives_idle: int = Field(default=30, ge=1)
    database_keepalives_interval: int = Field(default=10, ge=1)
    database_keepalives_count: int = Field(default=3, ge=1)
    # seconds the audit queue may take to drain at shutdown; what is left then is logged and counted
    audit_shutdown_timeout: float = Field(default=10.0, ge=0)
    cors_origins: tuple[str, ...] = ("*",)
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Fetching absent prefetch keys from fhirServer (docs/operations.md, "Fetching from fhirServer"):
    # 0.5 s per TCP/TLS connect, 2.5 s for the whole fetch (real FHIR searches take 0.3-0.7 s).
    fetch_connect_timeout: float = Field(default=0.5, gt=0)
    fetch_total_timeout: float = Field(default=2.5, gt=0)
    fetch_max_pages: int = Field(default=10, ge=1)
    # pooled connections per FHIR server (scheme, host, port): a server holding them starves only itself
    fetch_connections_per_host: int = Field(default=4, ge=1)
    # Bundle entries per prefetch key, sent (more: 413 naming prefetch.<key>) or fetched (more: 412)
    max_entries_per_key: int = Field(default=1000, ge=1)
    audit_key: str = ""  # secret for the keyed hash of patient ids; required outside development
    audit_retention_days: int = Field(default=365, ge=1)
    rules_poll_seconds: float = Field(default=2.0, ge=0)  # 0 disables watching the rule files
    # The SMART on FHIR app (/app/). Off by default in production; on in development (demo only unless
    # CDS_APP_FHIR_SERVERS allows a FHIR base: a launch sends the user's token there).
    app: bool = False
    app_client_id: str = "lbp-cds-app"
    app_client_secret: str = ""  # empty: a public client (PKCE only); set: confidential (client_secret_basic)
    app_fhir_servers: tuple[str, ...] = ()  # FHIR bases (iss) the app may launch against, exactly as sent
    app_secret: str = ""  # key of the encrypted session cookie; required serving in production with the app on
    app_frame_ancestors: tuple[str, ...] = ("'self'",)  # CSP frame-ancestors: the EHR origins that embed the app
    app_demo: bool = False  # /app/?demo=<example>: the bundled examples, writing disabled
    app_demo_dir: Path = REPO_ROOT / "fhir_examples" / "requests"
    development: bool = False  # not an environment variable: `cds run --dev`, `make run`

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        load = _LOAD.get()
        return init_settings, _EnvSource(settings_cls, load.environ), _DefaultsSource(settings_cls, load.defaults)

    @field_validator("auth", mode="before")
    @classmethod
    def _on_off(cls, v: object) -> object:
        if isinstance(v, str):
            if v.strip().lower() not in _TRUE + _FALSE:
                raise ValueError(f"use on or off, not {v!r}")
            return v.strip().lower() in _TRUE
        return v

    @field_validator("allow_http_fhir", "allow_http_jwks", "app", "app_demo", mode="before")
    @classmethod
    def _flag(cls, v: object) -> object:
        if isinstance(v, str):
            if v.strip() == "":
                return False  # set but empty: off, as before
            if v.strip().lower() not in _TRUE + _FALSE:
                raise ValueError(f"use 1 or 0 (on/off, true/false, yes/no), not {v!r}")
            return v.strip().lower() in _TRUE
        return v

    @field_validator("evaluation_date", mode="before")
    @classmethod
    def _date_or_today(cls, v: object) -> object:
        if isinstance(v, str):
            text = v.strip()
            if text.lower() == "today":
                return None
            try:
                if len(text) != 10:
                    raise ValueError("not in the form YYYY-MM-DD")
                return dt.date.fromisoformat(text)
            except ValueError as e:
                raise ValueError(f"expected a date YYYY-MM-DD or 'today', got {v!r} ({e})") from None
        return v

    @field_validator("trusted_issuers", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("jti_store", mode="before")
    @classmethod
    def _lower(cls, v: object, info: ValidationInfo) -> object:
        if isinstance(v, str):
            v = v.strip().lower() or None
        if v is None:
            return "database" if info.data.get("database_url") else "memory"
        return v

    @field_validator("cors_origins", "app_frame_ancestors", mode="before")
    @classmethod
    def _comma_list(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(o.strip() for o in v.split(",") if o.strip())
        return v

    @field_validator("app_fhir_servers", mode="before")
    @classmethod
    def _json_or_comma_list(cls, v: object) -> object:
        """A JSON list (``["https://a/fhir", ...]``) or a comma-separated list; trailing ``/`` ignored."""
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                try:
                    v = json.loads(text)
                except ValueError as e:
                    raise ValueError(f"not a JSON list of URLs ({e})") from None
                if not isinstance(v, list) or not all(isinstance(u, str) for u in v):
                    raise ValueError("expected a JSON list of URL strings")
            else:
                v = text.split(",")
        if isinstance(v, (list, tuple)):
            out = []
            for u in v:
                u = str(u).strip().rstrip("/")
                if not u:
                    continue
                if not u.startswith(("https://", "http://")):
                    raise ValueError(f"{u!r} is not an http(s) URL")
                out.append(u)
            return tuple(out)
        return v

    @field_validator("audit_key")
    @classmethod
    def _key_length(cls, v: str) -> str:
        if v and len(v.encode()) < 16:
            raise ValueError("must be at least 16 characters")
        return v

    @field_validator("app_secret")
    @classmethod
    def _secret_length(cls, v: str) -> str:
        if v and len(v.encode()) < 32:
            raise ValueError("must be at least 32 characters")
        return v

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @property
    def app_embedded_by_other_sites(self) -> bool:
        """True when ``CDS_APP_FRAME_ANCESTORS`` names an origin besides ``'self'`` (an EHR that frames
        the app): its session cookie must then be sent from inside a cross-site iframe."""
        return any(a not in ("'self'", "'none'") for a in self.app_frame_ancestors)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.fetch_connect_timeout > self.fetch_total_timeout:
            raise ValueError(
                f"CDS_FETCH_CONNECT_TIMEOUT: {self.fetch_connect_timeout} s is longer than the whole fetch "
                f"budget CDS_FETCH_TOTAL_TIMEOUT ({self.fetch_total_timeout} s)"
            )
        if self.jti_store == "database" and not self.database_url:
            raise ValueError("CDS_JTI_STORE: 'database' needs CDS_DATABASE_URL, which is empty")
        if self.app and not self.app_secret and not self.development and _LOAD.get().serving:
            raise ValueError(
                "CDS_APP_SECRET: required when the SMART app is on (CDS_APP=on) outside development: the key of "
                "its encrypted session cookie, at least 32 characters, the same on every instance"
            )
        if self.app and self.app_embedded_by_other_sites and not _secure_origin(self.public_base_url):
            raise ValueError(
                "CDS_APP_FRAME_ANCESTORS: an app embedded by another site (an EHR's iframe) keeps its session in a "
                "cookie marked SameSite=None; Secure, which browsers accept only over https: set "
                f"CDS_PUBLIC_BASE_URL to the app's https URL (it is {self.public_base_url!r})"
            )
        if self.database_url and not self.audit_key and not self.development and _LOAD.get().serving:
            raise ValueError(
                "CDS_AUDIT_KEY: required when the audit is on (a secret of at least 16 characters, the same on "
                "every instance, so the keyed patient hashes can be linked)"
            )
        return self


def _secure_origin(url: str) -> bool:
    """https, or plain http on loopback (browsers treat both as secure contexts and keep Secure cookies)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1", "::1"))


def development_defaults() -> dict[str, object]:
    """``make run``: no auth, plain-http FHIR, and the examples' fixed evaluation date."""
    defaults: dict[str, object] = {"auth": False, "allow_http_fhir": True, "development": True,
                                   "app": True, "app_demo": True}
    if EXAMPLES_CONFIG.exists():
        defaults["evaluation_date"] = json.loads(EXAMPLES_CONFIG.read_text())["evaluationDate"]
    return defaults


def _message(e: ValidationError, field_to_var: Mapping[str, str] = _FIELD_TO_VAR) -> str:
    msgs = []
    for err in e.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["loc"]:
            field_name = str(err["loc"][0])
            msgs.append(f"{field_to_var.get(field_name, field_name)}: {msg}")
        else:
            msgs.append(msg)  # a cross-field check: the message starts with the variable
    return "; ".join(msgs)


def load_settings(
    environ: Mapping[str, str] | None = None, *, development: bool = False, serving: bool = True, **overrides: object
) -> Settings:
    """Settings from the embedded defaults, then ``environ`` (default ``os.environ``), then overrides.

    ``serving=False`` (the ``cds db`` and ``report`` tools) skips the checks that only matter to a
    running service (``CDS_AUDIT_KEY`` outside development). Raises :class:`ConfigError`.
    """
    token = _LOAD.set(_Load(environ, development_defaults() if development else {}, serving))
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # validated by pydantic; mypy sees only the settings options
    except ValidationError as e:
        raise ConfigError(_message(e)) from None
    finally:
        _LOAD.reset(token)


# ---------------------------------------------------------------------------------------------------
# The server launcher's settings (cds.serve, cds.gunicorn_conf): read before any worker imports the app


SERVER_ENV: dict[str, str] = {
    "CDS_HOST": "host",
    "CDS_PORT": "port",
    "CDS_WORKERS": "workers",
    "CDS_THREADS": "threads",
    "CDS_HEADER_TIMEOUT": "header_timeout",
    "CDS_BODY_TIMEOUT": "body_timeout",
    "CDS_GRACEFUL_TIMEOUT": "graceful_timeout",
}
_SERVER_FIELD_TO_VAR = {f: v for v, f in SERVER_ENV.items()}
#: the largest value of each whole-number server setting (granian takes a header timeout of at most 60 s)
_SERVER_MAXIMUM = {"port": 65535, "header_timeout": 60, "body_timeout": 3600, "graceful_timeout": 1800}


def available_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: the cgroup v2 quota (``cpu.max``, rounded up) when there is one,
    else the CPU affinity; at least 1. The default of ``CDS_WORKERS``."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            return max(1, min(affinity, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, affinity)


class ServerSettings(BaseSettings):
    """What the launcher needs: bind address, processes, threads and the slow-client deadlines
    (``cds.serve`` documents each)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = Field(default_factory=available_cpus)
    threads: int = 8
    header_timeout: int = 10  # seconds
    body_timeout: int = 15  # seconds
    graceful_timeout: int = 20  # seconds

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # only what load_server_settings read from SERVER_ENV (never HOST, PORT...)

    @field_validator("port", "workers", "threads", "header_timeout", "body_timeout", "graceful_timeout", mode="before")
    @classmethod
    def _whole_number_in_range(cls, v: object, info: ValidationInfo) -> object:
        if isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                raise ValueError(f"not a whole number: {v!r}") from None
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"not a whole number: {v!r}")
        if v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        maximum = _SERVER_MAXIMUM.get(info.field_name or "")
        if maximum is not None and v > maximum:
            raise ValueError(f"must be at most {maximum}, got {v}")
        return v


def load_server_settings(environ: Mapping[str, str] | None = None) -> ServerSettings:
    """The launcher's settings from ``environ`` (default ``os.environ``). Raises :class:`ConfigError`
    naming the variable (``CDS_THREADS: must be at least 1, got 0``)."""
    env = os.environ if environ is None else environ
    values = {f: env[v].strip() for v, f in SERVER_ENV.items() if env.get(v, "").strip()}  # blank: the default
    try:
        return ServerSettings(**values)  # type: ignore[arg-type]  # strings: the validator parses them
    except ValidationError as e:
        raise ConfigError(_message(e, _SERVER_FIELD_TO_VAR)) from None
