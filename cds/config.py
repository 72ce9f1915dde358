"""Service configuration: environment variables (SPEC §4), over an embedded default.

Two embedded defaults exist: production (auth on) and development (``cds run --dev`` / ``make run``:
auth off, plain-http FHIR allowed, the bundled examples' evaluation date). Environment variables
always win over either.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_CONFIG = REPO_ROOT / "fhir_examples" / "config.json"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rules_dir: Path = REPO_ROOT / "rules"
    evaluation_date: dt.date | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_base_url: str = "http://127.0.0.1:8080"
    auth: bool = True
    trusted_issuers: Path | None = None
    allow_http_fhir: bool = False
    database_url: str = f"sqlite:///{Path.cwd() / 'var' / 'lbp-cds.sqlite3'}"
    # JWT replay store: per process ("memory") or the database at database_url, shared by every instance
    jti_store: Literal["memory", "database"] = "memory"
    cors_origins: tuple[str, ...] = ("*",)
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    fetch_connect_timeout: float = Field(default=0.1, gt=0)
    fetch_total_timeout: float = Field(default=0.4, gt=0)
    fetch_max_pages: int = Field(default=10, ge=1)
    audit_key: str = ""  # secret for the keyed hash of patient ids; required outside development
    audit_retention_days: int = Field(default=365, ge=1)
    rules_poll_seconds: float = Field(default=2.0, ge=0)  # 0 disables watching the rule files
    development: bool = False

    @field_validator("audit_key")
    @classmethod
    def _key_length(cls, v: str) -> str:
        if v and len(v.encode()) < 16:
            raise ValueError("must be at least 16 characters")
        return v

    @field_validator("jti_store")
    @classmethod
    def _jti_store_needs_a_database(cls, v: str, info: ValidationInfo) -> str:
        if v == "database" and not info.data.get("database_url"):
            raise ValueError("'database' needs CDS_DATABASE_URL, which is empty")
        return v

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")


#: environment variable -> settings field
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
    "CDS_CORS_ORIGINS": "cors_origins",
    "CDS_MAX_BODY_BYTES": "max_body_bytes",
    "CDS_FETCH_CONNECT_TIMEOUT": "fetch_connect_timeout",
    "CDS_FETCH_TOTAL_TIMEOUT": "fetch_total_timeout",
    "CDS_FETCH_MAX_PAGES": "fetch_max_pages",
    "CDS_AUDIT_KEY": "audit_key",
    "CDS_AUDIT_RETENTION_DAYS": "audit_retention_days",
    "CDS_RULES_POLL_SECONDS": "rules_poll_seconds",
}


def development_defaults() -> dict[str, object]:
    """``make run``: no auth, plain-http FHIR, and the examples' fixed evaluation date."""
    defaults: dict[str, object] = {"auth": False, "allow_http_fhir": True, "development": True}
    if EXAMPLES_CONFIG.exists():
        defaults["evaluation_date"] = json.loads(EXAMPLES_CONFIG.read_text())["evaluationDate"]
    return defaults


def _parse(field: str, raw: str) -> object:
    if field in ("auth",):
        if raw.lower() not in ("on", "off", "1", "0", "true", "false"):
            raise ValueError("use on or off")
        return raw.lower() in ("on", "1", "true")
    if field == "allow_http_fhir":
        return raw.lower() in ("1", "on", "true", "yes")
    if field == "jti_store":
        return raw.strip().lower()
    if field == "cors_origins":
        return tuple(o.strip() for o in raw.split(",") if o.strip())
    if field == "evaluation_date" and raw.lower() == "today":
        return None
    if field in ("trusted_issuers",) and not raw:
        return None
    return raw


def load_settings(environ: Mapping[str, str] | None = None, *, development: bool = False, **overrides: object) -> Settings:
    """Settings from the embedded defaults, then ``environ`` (default ``os.environ``), then overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = development_defaults() if development else {}
    for var, field in ENV.items():
        if var in env:
            try:
                values[field] = _parse(field, env[var])
            except ValueError as e:
                raise ConfigError(f"{var}: {e}") from None
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as e:
        field_to_var = {f: v for v, f in ENV.items()}
        msgs = [f"{field_to_var.get(str(err['loc'][0]), err['loc'][0])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("; ".join(msgs)) from None
