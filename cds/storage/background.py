"""Audit writes off the request path: a hook call must answer even when the database is slow or down."""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable

from .store import AuditRecord, Store
from .transaction import StoreUnavailable

log = logging.getLogger("cds.audit")

#: writers with a thread in this process, flushed when the interpreter exits (gunicorn worker, cds run)
_LIVE: weakref.WeakSet[AuditWriter] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:  # pragma: no cover - runs at interpreter exit (tested in a subprocess)
    for writer in list(_LIVE):
        writer.shutdown()


class AuditWriter:
    """A bounded queue drained by one daemon thread that calls ``store.record_evaluations``: a record
    and whatever arrives within ``linger`` seconds after it (up to ``batch_max``) go in one transaction.

    ``submit`` never blocks and never raises: when the queue is full the record is dropped and counted
    (``dropped``); storage failures are logged (no PHI: only the hook instance and the error class) and
    counted (``failed``). The thread starts lazily in the calling process, so it is safe with pre-forking
    servers (gunicorn): build the writer before the fork, the thread starts in each worker.

    At interpreter exit (a worker's SIGTERM, the end of ``cds run``) :meth:`shutdown` waits up to
    ``shutdown_timeout`` seconds for the queue to drain; records still not written then are counted
    (``abandoned``) and logged as one line with their number.
    """

    def __init__(
        self, store: Store, maxsize: int = 1000, shutdown_timeout: float = 10.0, batch_max: int = 100,
        linger: float = 0.02,
    ):
        self.store = store
        self.shutdown_timeout = shutdown_timeout
        #: records written in one transaction at most
        self.batch_max = batch_max
        #: seconds a record waits for others to share its transaction (a transaction per record costs
        #: ~1 ms of CPU on PostgreSQL, one of ten records 0.2 ms each: bench/bench_audit.py)
        self.linger = linger
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue(maxsize=maxsize)
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self.abandoned = 0
        #: called after :meth:`shutdown` counted abandoned records (e.g. to write a multiprocess metric)
        self.after_shutdown: Callable[[], None] | None = None

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                if self._pid is not None and self._pid != os.getpid():
                    self._queue = queue.Queue(maxsize=self._queue.maxsize)  # parent's queue is not ours
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="cds-audit-writer", daemon=True)
                self._thread.start()
                _LIVE.add(self)

    def submit(self, record: AuditRecord) -> bool:
        self._ensure_thread()
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            log.error("audit queue full; audit record dropped", extra={"hook_instance": record.hook_instance})
            return False

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                self._queue.task_done()
                return
            batch = [record]
            stop = False
            deadline = time.monotonic() + self.linger
            while len(batch) < self.batch_max:  # what queues up meanwhile goes in the same transaction
                try:
                    queued = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if queued is None:
                    stop = True
                    break
                batch.append(queued)
            try:
                self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                self._queue.task_done()
                return

    def _write(self, batch: list[AuditRecord]) -> None:
        try:
            self.store.record_evaluations(batch)
            self.written += len(batch)
        except StoreUnavailable as exc:
            self.failed += len(batch)
            for record in batch:
                log.error("audit not stored: database unavailable (%s)", type(exc.__cause__ or exc).__name__,
                          extra={"hook_instance": record.hook_instance})
        except Exception as exc:  # noqa: BLE001 - the writer thread must survive anything
            if len(batch) > 1:  # rolled back: one record's problem must not lose the others
                for record in batch:
                    self._write([record])
                return
            self.failed += 1
            log.error("audit not stored: %s", type(exc).__name__, extra={"hook_instance": batch[0].hook_instance})

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far has been handled (tests, shutdown)."""
        if self._thread is None:
            return True
        done = threading.Event()

        def _wait():
            self._queue.join()
            done.set()

        threading.Thread(target=_wait, daemon=True).start()
        return done.wait(timeout)

    def pending(self) -> int:
        """Records submitted and not yet handled (queued or being written)."""
        return self._queue.unfinished_tasks

    def shutdown(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` (default ``shutdown_timeout``) seconds for the queue to drain; returns how
        many records were still not written then, which are counted in ``abandoned`` and logged (the count
        only). The writer keeps working for later submissions."""
        if self._thread is None or self._pid != os.getpid():
            return 0
        timeout = self.shutdown_timeout if timeout is None else timeout
        if self.flush(timeout):
            return 0
        left = self.pending()
        with self._lock:
            self.abandoned += left
        log.error(
            "shutdown: %d audit record(s) not written after waiting %.1f s for the database; they are lost "
            "(counted in cds_audit_failures)", left, timeout,
        )
        if self.after_shutdown is not None:
            try:
                self.after_shutdown()
            except Exception as exc:  # noqa: BLE001 - shutting down: report, never raise
                log.error("shutdown: audit failure count not published (%s)", type(exc).__name__)
        return left

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            self.flush(timeout)
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                return
            self._thread.join(timeout)
