"""The Flask app factory: configuration, the live rule set, and the blueprints."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from ..clock import Clock, clock_for
from ..config import Settings, load_settings
from ..live_rules import LiveRuleSet
from .errors import register_error_handlers
from .routes import bp as hooks_bp

log = logging.getLogger("cds.http")


@dataclass
class AppState:
    """What the request handlers share. Built once per app."""

    settings: Settings
    rules: LiveRuleSet
    clock: Clock
    observers: list[Any] = field(default_factory=list)

    def after_evaluation(self, hook_request, service_id, outcome) -> None:
        for observer in self.observers:
            observer.after_evaluation(hook_request, service_id, outcome)

    def observe_fetch_error(self, key: str | None) -> None:
        for observer in self.observers:
            observer.fetch_error(key)


def create_app(settings: Settings | None = None, *, rules: LiveRuleSet | None = None, clock: Clock | None = None) -> Flask:
    settings = settings or load_settings()
    app = Flask("cds")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    live = rules or LiveRuleSet(settings.rules_dir, poll_seconds=settings.rules_poll_seconds)
    state = AppState(
        settings=settings,
        rules=live,
        clock=clock or clock_for(settings.evaluation_date),
    )
    app.extensions["lbp_cds"] = state
    app.register_blueprint(hooks_bp)
    register_error_handlers(app)
    live.start_watching()
    if not settings.auth:
        log.warning("AUTHENTICATION IS OFF: any caller can use this service. Development only; set CDS_AUTH=on.")
    return app
