"""The rule set in use, swapped atomically when the files change and the new version is safe to serve.

Start-up passes the same gate: a folder that fails the checker or its own rule tests is never served,
not even first.

A request calls :meth:`LiveRuleSet.current` once and gets an immutable (rule set, engine) pair
(:class:`~cds.active_rules.ActiveRules`), so it is evaluated by exactly one rule-set version even while
a reload happens. A candidate version is swapped in only if it passes the rule checker and, when the
folder has a ``tests/`` directory with cases, every one of its rule tests; otherwise the log says why
(the ``file:line:column`` problems, or the failing cases and where they are) and the previous version
keeps serving.

The watcher reloads only files that have been stable for one poll: when the fingerprint (name, mtime,
size of each rule file and rule-test file) changes it is remembered, and the files are loaded only when the next poll sees
the same fingerprint again, so a file saved in two steps is never loaded half-written.

A replaced engine's C ruleset is freed as soon as no request holds the old pair any more (see
:mod:`cds.active_rules`); the watcher also frees, every poll, any that were dropped while the engine
lock was busy.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from . import engine as _engine
from .active_rules import ActiveRules
from .reload_gate import CandidateRejected, candidate
from .ruleset.loader import RuleSetError, load_ruleset, rule_files

log = logging.getLogger("cds.rules")


def _fingerprint(folder: Path) -> tuple:
    """Name, mtime and size of each rule file and each rule-test file (``tests/*.yaml``: fixing a
    failing case makes the watcher try the rule files again)."""
    try:
        files = [*rule_files(folder), *sorted((folder / "tests").glob("*.y*ml"))]
        return tuple((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    except OSError:
        return ()


class LiveRuleSet:
    def __init__(self, folder: str | Path, *, poll_seconds: float = 0.0):
        self.folder = Path(folder)
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()  # one reload at a time
        self._fingerprint = _fingerprint(self.folder)
        self._seen: tuple | None = None  # a changed fingerprint waiting to be seen again (stable)
        self._active = self._first(self.folder)
        self.last_error: Exception | None = None
        #: sha256 of every version served, in order (the first is the one loaded at start)
        self.history: list[str] = [self._active.ruleset.sha256]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        ident = self._active.ruleset.identity
        log.info("rule set loaded", extra={"ruleset": ident.name, "version": ident.version, "sha256": ident.sha256})

    @staticmethod
    def _first(folder: Path) -> ActiveRules:
        """The version served from start-up, through the same gate as every reload: invalid rule files
        raise their :class:`~cds.ruleset.loader.RuleSetError` (``file:line:column`` problems); a rule
        engine that refuses them, or a failing case of the folder's own ``tests/``, raises
        :class:`~cds.reload_gate.CandidateRejected` (``one_line`` names the first failed case and where)."""
        try:
            return candidate(folder)
        except CandidateRejected as e:
            if e.ruleset_error is not None:
                raise e.ruleset_error from None
            raise

    def current(self) -> ActiveRules:
        return self._active  # a single attribute read: atomic

    def reload(self, *, expect_fingerprint: tuple | None = None) -> bool:
        """Load the files again; swap in the new version if safe and different. True if swapped.

        With ``expect_fingerprint`` (the watcher), nothing is swapped if the files changed while they
        were read: the watcher sees the change and tries again once they are stable.
        """
        with self._lock:
            fingerprint = _fingerprint(self.folder)
            if expect_fingerprint is not None and fingerprint != expect_fingerprint:
                return False
            old = self._active.ruleset.identity
            try:
                ruleset = load_ruleset(self.folder)
                if expect_fingerprint is not None and _fingerprint(self.folder) != fingerprint:
                    log.info("rule files changed while being read; waiting until they are stable")
                    return False
                self._fingerprint = fingerprint
                if ruleset.sha256 == old.sha256:
                    self.last_error = None
                    return False
                new = candidate(self.folder, ruleset=ruleset)
            except RuleSetError as e:  # invalid files (from load_ruleset)
                self._fingerprint = fingerprint
                self._reject(CandidateRejected("rule files are invalid", str(e), ruleset_error=e), old)
                return False
            except CandidateRejected as e:
                self._reject(e, old)
                return False
            self.last_error = None
            if ruleset.identity.version == old.version:
                log.warning(
                    "rule files changed but ruleset.version is still %s (sha256 %s -> %s): "
                    "raise the version so decisions can be told apart",
                    old.version, old.sha256[:12], ruleset.sha256[:12],
                    extra={"ruleset": ruleset.identity.name, "version": old.version, "sha256": ruleset.sha256},
                )
            self._active = new  # the old pair is freed when its last request lets go of it
            self.history.append(ruleset.sha256)
            log.info(
                "rule set reloaded: %s -> %s", old.version, ruleset.identity.version,
                extra={"ruleset": ruleset.identity.name, "version": ruleset.identity.version, "sha256": ruleset.sha256},
            )
            return True

    def _reject(self, e: CandidateRejected, old) -> None:
        self.last_error = e.ruleset_error or e
        log.error(
            "%s; still serving version %s (%s)\n%s", e.summary, old.version, old.sha256[:12], e.details,
            extra={"ruleset": old.name, "version": old.version, "sha256": old.sha256},
        )

    def restart_after_fork(self) -> None:
        """In a forked server worker: threads and held locks do not survive ``fork``, so start afresh,
        pick up any edit made since the parent loaded the files, and watch them again."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._seen = None
        self.reload()
        self.start_watching()

    def changed_on_disk(self) -> bool:
        return _fingerprint(self.folder) != self._fingerprint

    def poll(self) -> bool:
        """One watcher step: reload if the files changed and have been stable since the last poll.
        True if a new version was swapped in."""
        _engine.free_pending()
        fingerprint = _fingerprint(self.folder)
        if fingerprint == self._fingerprint:
            self._seen = None
            return False
        if fingerprint != self._seen:
            self._seen = fingerprint  # changed: load it only if the next poll sees the same files
            return False
        self._seen = None
        return self.reload(expect_fingerprint=fingerprint)

    def start_watching(self) -> None:
        if self.poll_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="rules-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # never let the watcher die
                log.exception("rule reload failed")


__all__ = ["ActiveRules", "LiveRuleSet"]
