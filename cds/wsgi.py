"""WSGI entry point for production servers: ``gunicorn cds.wsgi:app`` (JSON logs, env configuration)."""

import logging
import sys

from .collector import settle_after_start_up
from .config import ConfigError, load_settings
from .http import create_app
from .logs import configure_logging
from .reload_gate import CandidateRejected
from .ruleset.loader import RuleSetError

configure_logging(logging.INFO)
try:
    settings = load_settings()  # the same loader as `cds run`: the environment over the production defaults
except ConfigError as e:
    print(f"configuration error: {e}", file=sys.stderr, flush=True)
    # Under gunicorn a worker exiting 4 (its APP_LOAD_ERROR) stops the server instead of being
    # restarted in a loop; anywhere else, the CLI's exit code for a configuration error.
    raise SystemExit(4 if "gunicorn" in sys.modules else 2) from None
# Under gunicorn a worker exiting 4 (its APP_LOAD_ERROR) stops the server instead of being
# restarted in a loop; anywhere else, the CLI's exit code for a refused start.
_REFUSED = 4 if "gunicorn" in sys.modules else 1
try:
    app = create_app(settings)
except ConfigError as e:  # e.g. a trusted-issuers file that does not validate
    print(f"configuration error: {e}", file=sys.stderr, flush=True)
    raise SystemExit(_REFUSED) from None
except RuleSetError as e:
    print(f"refusing to start: the rule files in {settings.rules_dir} are invalid:\n{e}", file=sys.stderr, flush=True)
    raise SystemExit(_REFUSED) from None
except CandidateRejected as e:  # the rule engine refuses them, or they fail their own rule tests
    print(f"refusing to start: {settings.rules_dir}: {e.one_line}", file=sys.stderr, flush=True)
    raise SystemExit(_REFUSED) from None
settle_after_start_up()  # the collector: start-up objects frozen, full collections rare (cds/collector.py)
