"""WSGI entry point for production servers: ``gunicorn cds.wsgi:app`` (JSON logs, env configuration)."""

import logging

from .http import create_app
from .logs import configure_logging

configure_logging(logging.INFO)
app = create_app()
