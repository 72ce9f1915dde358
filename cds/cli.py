"""The ``cds`` command: run the service, check and test rule files, evaluate a request offline."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import ConfigError, Settings, load_settings


def _cmd_run(args: argparse.Namespace) -> int:
    from .http import create_app
    from .logs import configure_logging
    from .reload_gate import CandidateRejected
    from .ruleset.loader import RuleSetError

    settings = load_settings(development=args.dev)  # a ConfigError: one line and exit 2 (main)
    configure_logging(logging.INFO)
    from .live_rules import LiveRuleSet

    try:
        # No watcher thread in the gunicorn master (threads do not survive fork): each worker starts
        # its own after the fork (``load``); SIGHUP makes the master reload too before new workers fork.
        live = LiveRuleSet(settings.rules_dir, poll_seconds=0)
        app = create_app(settings, rules=live)
    except RuleSetError as e:
        print(f"refusing to start: the rule files in {settings.rules_dir} are invalid:\n{e}", file=sys.stderr)
        return 1
    except CandidateRejected as e:  # the rule engine refuses them, or they fail their own rule tests
        print(f"refusing to start: {settings.rules_dir}: {e.one_line}", file=sys.stderr)
        return 1
    if settings.evaluation_date:
        logging.getLogger("cds").warning(
            "evaluation date fixed at %s (CDS_EVALUATION_DATE=today to use today's date)", settings.evaluation_date
        )
    from gunicorn.app.base import BaseApplication

    class _Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", 1)
            self.cfg.set("threads", 8)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("accesslog", "-")
            self.cfg.set("on_reload", _on_sighup)

        def load(self):  # runs in each worker, after the fork
            live.poll_seconds = settings.rules_poll_seconds
            live.restart_after_fork()
            return app

    def _on_sighup(arbiter) -> None:
        # `kill -HUP <pid>`: gunicorn restarts its workers; validate and load the rule files first so
        # the new workers start from the edited version (or keep the old one when the edit is invalid).
        live.reload()

    from .collector import settle_after_start_up

    settle_after_start_up()  # start-up objects frozen, full collections rare (cds/collector.py)
    _Server().run()
    return 0


def _cmd_rules_check(args: argparse.Namespace) -> int:
    from .ruleset.loader import check_ruleset, check_since

    problems = check_ruleset(args.path, warnings=True)
    if args.since:
        problems = sorted([*problems, *check_since(args.path, args.since)])
    for problem in problems:
        print(problem)
    errors = [p for p in problems if p.is_error]
    warnings = len(problems) - len(errors)
    if errors:
        also = f" and {warnings} warning(s)" if warnings else ""
        print(f"{len(errors)} problem(s){also} in {args.path}", file=sys.stderr)
        return 1
    if warnings and args.strict:
        print(f"{warnings} warning(s) in {args.path} (--strict: warnings fail the check)", file=sys.stderr)
        return 1
    if warnings:
        print(f"{warnings} warning(s) in {args.path}", file=sys.stderr)
    print(f"{args.path}: rule set is valid")
    return 0


def _cmd_rules_test(args: argparse.Namespace) -> int:
    from .ruleset.loader import RuleSetError
    from .ruletests import RuleTestError, format_report, run_tests

    try:
        report = run_tests(args.path, args.tests)
    except (RuleSetError, RuleTestError) as e:
        for problem in e.problems:
            print(problem)
        what = "rule files" if isinstance(e, RuleSetError) else "rule test files"
        print(f"{len(e.problems)} problem(s) in the {what}; no case was run", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0 if report.ok else 1


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import datetime as dt
    import json

    from .explain import EvaluateError, evaluate_request, explain, read_request, render_text
    from .ruleset.loader import RuleSetError
    from .ruletests import active_rules

    settings = load_settings(serving=False)  # CDS_RULES_DIR, CDS_EVALUATION_DATE, as `cds run` reads them
    rules_dir = args.rules or settings.rules_dir
    as_of = args.as_of or settings.evaluation_date or dt.date.today()
    try:
        active = active_rules(rules_dir)
    except RuleSetError as e:
        print(f"the rule files in {rules_dir} are invalid:\n{e}", file=sys.stderr)
        return 1
    try:
        body = read_request(args.request)
        outcome = evaluate_request(body, active, as_of, source=str(args.request))
    except EvaluateError as e:
        print(f"cannot evaluate: {e}", file=sys.stderr)
        return 2
    report = explain(outcome, active)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report, active), end="")
    return 0


def _settings_or_exit() -> Settings:
    """The settings for the database tools (no CDS_AUDIT_KEY needed); a ConfigError is printed by main."""
    return load_settings(serving=False)


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from .storage import StoreUnavailable, current_revision, upgrade

    url = args.database_url or _settings_or_exit().database_url
    try:
        upgrade(url)
        print(f"database at revision {current_revision(url)}")
    except StoreUnavailable as e:
        print(f"database unavailable: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_db_purge(args: argparse.Namespace) -> int:
    from .storage import Store, StoreUnavailable

    settings = _settings_or_exit()
    days = args.days if args.days is not None else settings.audit_retention_days
    try:
        result = Store(args.database_url or settings.database_url).purge_retention(days)
    except StoreUnavailable as e:
        print(f"database unavailable: {e}", file=sys.stderr)
        return 1
    print(
        f"purged records older than {days} days: {result.evaluations} evaluations, "
        f"{result.feedback} feedback reports, {result.replay_entries} expired JWT replay entries"
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import datetime as dt

    from .report import format_report
    from .storage import Store, StoreUnavailable

    url = args.database_url or _settings_or_exit().database_url
    since = dt.datetime.combine(args.since, dt.time(), dt.timezone.utc) if args.since else None
    try:
        rows = Store(url).report(since)
    except StoreUnavailable as e:
        print(f"database unavailable: {e}", file=sys.stderr)
        return 1
    print(format_report(rows, args.format), end="" if args.format == "table" else "\n")
    return 0


def _date(text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if days < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of days, at least 1, got {text!r}")
    return days


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cds", description="lbp-cds: low-back strengthening CDS Hooks service")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve the CDS Hooks endpoints")
    run.add_argument("--dev", action="store_true", help="embedded development configuration (auth off)")
    run.set_defaults(func=_cmd_run)

    rules = sub.add_parser("rules", help="rule-file tools").add_subparsers(dest="rules_command", required=True)
    check = rules.add_parser("check", help="validate rule files; problems as file:line:column: message")
    check.add_argument("path", nargs="?", default="rules", type=Path)
    check.add_argument("--strict", action="store_true", help="warnings fail the check too (exit 1)")
    check.add_argument("--since", metavar="REF", default=None,
                       help="warn when the rule files changed since git revision REF but ruleset.version did not")
    check.set_defaults(func=_cmd_rules_check)
    test = rules.add_parser("test", help="run the rule tests (PATH/tests/*.yaml) and report uncovered rules")
    test.add_argument("path", nargs="?", default="rules", type=Path, help="the rule folder (default: rules)")
    test.add_argument("--tests", type=Path, default=None, help="folder of test files (default: PATH/tests)")
    test.set_defaults(func=_cmd_rules_test)

    ev = sub.add_parser("evaluate", help="evaluate a hook request offline and explain the facts, rules and cards")
    ev.add_argument("request", type=Path, help="a patient-view request (JSON) with every prefetch key")
    ev.add_argument("--as-of", type=_date, default=None,
                    help="evaluation date YYYY-MM-DD (default: CDS_EVALUATION_DATE, else today)")
    ev.add_argument("--format", choices=("text", "json"), default="text")
    ev.add_argument("--rules", type=Path, default=None, help="rule folder (default: CDS_RULES_DIR, else rules/)")
    ev.set_defaults(func=_cmd_evaluate)

    db = sub.add_parser("db", help="database tools").add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="run the database migrations (CDS_DATABASE_URL)")
    up.add_argument("--database-url", default=None)
    up.set_defaults(func=_cmd_db_upgrade)
    purge = db.add_parser("purge", help="delete audit and feedback older than the retention period")
    purge.add_argument("--days", type=_days, default=None, help="keep this many days (default: CDS_AUDIT_RETENTION_DAYS)")
    purge.add_argument("--database-url", default=None)
    purge.set_defaults(func=_cmd_db_purge)

    report = sub.add_parser("report", help="cards shown, accepted and overridden per rule and rule-set version")
    report.add_argument("--since", type=_date, default=None, help="only evaluations on or after YYYY-MM-DD")
    report.add_argument("--format", choices=("table", "json"), default="table")
    report.add_argument("--database-url", default=None, help="default: CDS_DATABASE_URL")
    report.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``cds`` command. A configuration problem is one line on stderr, ``configuration error:
    CDS_VARIABLE: what is wrong``, and exit code 2; no traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
