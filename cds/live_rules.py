"""The rule set in use, swapped atomically when the files change and the new version is valid.

A request calls :meth:`LiveRuleSet.current` once and gets an immutable (rule set, engine) pair, so it
is evaluated by exactly one rule-set version even while a reload happens. An invalid edit is logged
with its ``file:line:column`` problems and the previous version keeps serving.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from .engine import RuleEngine
from .ruleset.loader import RuleSetError, load_ruleset, rule_files
from .ruleset.model import RuleSet

log = logging.getLogger("cds.rules")


@dataclass(frozen=True)
class ActiveRules:
    ruleset: RuleSet
    engine: RuleEngine


def _fingerprint(folder: Path) -> tuple:
    try:
        return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in rule_files(folder))
    except OSError:
        return ()


class LiveRuleSet:
    def __init__(self, folder: str | Path, *, poll_seconds: float = 0.0):
        self.folder = Path(folder)
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()  # one reload at a time
        self._fingerprint = _fingerprint(self.folder)
        self._active = self._build(load_ruleset(self.folder))  # invalid rules: refuse to start
        self.last_error: RuleSetError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        ident = self._active.ruleset.identity
        log.info("rule set loaded", extra={"ruleset": ident.name, "version": ident.version, "sha256": ident.sha256})

    @staticmethod
    def _build(ruleset: RuleSet) -> ActiveRules:
        return ActiveRules(ruleset, RuleEngine(ruleset))

    def current(self) -> ActiveRules:
        return self._active  # a single attribute read: atomic

    def reload(self) -> bool:
        """Load the files again; swap in the new version if valid and different. True if swapped."""
        with self._lock:
            self._fingerprint = _fingerprint(self.folder)
            try:
                ruleset = load_ruleset(self.folder)
            except RuleSetError as e:
                self.last_error = e
                old = self._active.ruleset.identity
                log.error(
                    "rule files are invalid; still serving version %s (%s)\n%s", old.version, old.sha256[:12], e,
                    extra={"ruleset": old.name, "version": old.version, "sha256": old.sha256},
                )
                return False
            self.last_error = None
            if ruleset.sha256 == self._active.ruleset.sha256:
                return False
            new = self._build(ruleset)
            old = self._active.ruleset.identity
            self._active = new
            log.info(
                "rule set reloaded: %s -> %s", old.version, ruleset.identity.version,
                extra={"ruleset": ruleset.identity.name, "version": ruleset.identity.version, "sha256": ruleset.sha256},
            )
            return True

    def restart_after_fork(self) -> None:
        """In a forked server worker: threads and held locks do not survive ``fork``, so start afresh,
        pick up any edit made since the parent loaded the files, and watch them again."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.reload()
        self.start_watching()

    def changed_on_disk(self) -> bool:
        return _fingerprint(self.folder) != self._fingerprint

    def start_watching(self) -> None:
        if self.poll_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="rules-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            if self.changed_on_disk():
                try:
                    self.reload()
                except Exception:  # never let the watcher die
                    log.exception("rule reload failed")
