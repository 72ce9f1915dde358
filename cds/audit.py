"""The decision audit: every hook call recorded with its rule-set version, decisions and card uuids.

Writes happen on a background thread so a slow or broken database never delays or breaks a card;
a failed write is logged (and counted), never silent. The patient is stored only as a keyed hash.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading

from .storage import AuditCard, AuditRecord, Store, hash_patient_id

log = logging.getLogger("cds.audit")

_STOP = object()


class AuditWriter:
    def __init__(self, store: Store, key: bytes | None = None, *, maxsize: int = 10_000, on_failure=None):
        self.store = store
        self.key = key or secrets.token_bytes(32)
        self.on_failure = on_failure
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def after_evaluation(self, hook_request, service_id, outcome) -> None:
        cards = tuple(
            AuditCard(
                card_uuid=card.uuid,
                rule_id=fired.rule_id,
                decision=fired.decision,
                indicator=fired.indicator,
                suggestion_uuids=tuple(s.uuid for s in card.suggestions or ()),
            )
            for card, fired in zip(outcome.cards, outcome.evaluation.fired)
        )
        ident = outcome.evaluation.ruleset
        record = AuditRecord(
            hook_instance=hook_request.hook_instance,
            service_id=service_id,
            ruleset_name=ident.name,
            ruleset_version=ident.version,
            ruleset_sha256=ident.sha256,
            patient_hash=hash_patient_id(self.key, hook_request.context.patient_id),
            cards=cards,
        )
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._failed("audit queue full: record not written")

    def fetch_error(self, key: str | None) -> None:
        return None

    def _failed(self, message: str) -> None:
        log.error(message)
        if self.on_failure:
            self.on_failure()

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if record is _STOP:
                    return
                try:
                    self.store.record_evaluation(record)
                except Exception as e:  # noqa: BLE001 - an audit failure must never stop the writer
                    self._failed(f"audit record not written: {type(e).__name__}")
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every queued record has been written (or has failed)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=5)
