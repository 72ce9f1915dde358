"""Structured JSON logs with a request id. Messages never carry tokens, patient ids or clinical values:
the code logs resource ids, keys and reasons only, and this formatter adds only whitelisted fields."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

#: ``extra=`` fields that may appear in a log line
ALLOWED_EXTRA = ("ruleset", "version", "sha256", "service", "status", "duration_ms", "hook_instance", "key", "path")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
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
        return json.dumps(line, default=str)


def configure_logging(level: int = logging.INFO, *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs full request URLs (they carry patient ids) at INFO
    logging.getLogger("httpx").setLevel(logging.WARNING)
