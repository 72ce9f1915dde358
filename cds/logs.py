"""Structured JSON logs with a request id. Messages never carry tokens, patient ids or clinical values:
the code logs resource ids, keys and reasons only, and this formatter adds only whitelisted fields."""

from __future__ import annotations

import contextvars
import json
import logging
import time

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

#: ``extra=`` fields that may appear in a log line
ALLOWED_EXTRA = ("ruleset", "version", "sha256", "service", "status", "duration_ms", "hook_instance", "key", "path")


_second: tuple[int, str] = (-1, "")  # the last second formatted (one tuple: swapped atomically between threads)


def _utc_time(created: float) -> str:
    """``2026-12-04T03:50:01.123+00:00`` (ISO 8601, milliseconds, UTC); the seconds part is formatted once
    per second."""
    global _second
    seconds = int(created)
    cached = _second
    if cached[0] != seconds:
        cached = _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{cached[1]}.{int((created - seconds) * 1000):03d}+00:00"


class JsonFormatter(logging.Formatter):
    """One JSON object per line (orjson; the standard library for what orjson refuses)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": _utc_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            line["request_id"] = rid
        for name in ALLOWED_EXTRA:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(line, default=str).decode()
        except TypeError:  # a lone surrogate, an integer beyond 64 bits
            return json.dumps(line, default=str)


def configure_logging(level: int = logging.INFO, *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs full request URLs (they carry patient ids) at INFO
    logging.getLogger("httpx").setLevel(logging.WARNING)
