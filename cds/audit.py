"""The decision audit of hook calls: each evaluation becomes an :class:`AuditRecord` with its rule-set
version, decisions and card uuids, the patient only as a keyed hash, written off the request path by
:class:`cds.storage.AuditWriter` (a slow or broken database never delays or breaks a card)."""

from __future__ import annotations

import secrets

from .storage import AuditCard, AuditRecord, AuditWriter, Store, hash_patient_id


class AuditObserver:
    """Turns each evaluation into an audit record and hands it to the background writer."""

    def __init__(self, store: Store, key: bytes | None = None, *, shutdown_timeout: float = 10.0):
        self.key = key or secrets.token_bytes(32)
        self.writer = AuditWriter(store, shutdown_timeout=shutdown_timeout)

    def after_evaluation(self, hook_request, service_id, outcome) -> None:
        ident = outcome.evaluation.ruleset
        cards = tuple(
            AuditCard(
                card_uuid=card.uuid,
                rule_id=fired.rule_id,
                decision=fired.decision,
                indicator=fired.indicator,
                suggestion_uuids=tuple(s.uuid for s in card.suggestions or ()),
            )
            for fired, card in ((rc.fired, rc.card) for rc in outcome.rule_cards)
        )
        self.writer.submit(
            AuditRecord(
                hook_instance=hook_request.hook_instance,
                service_id=service_id,
                ruleset_name=ident.name,
                ruleset_version=ident.version,
                ruleset_sha256=ident.sha256,
                patient_hash=hash_patient_id(self.key, hook_request.context.patient_id),
                criteria_id=getattr(hook_request, "criteria_id", None),
                cards=cards,
            )
        )

    def fetch_error(self, key: str | None) -> None:
        return None

    def flush(self, timeout: float | None = None) -> bool:
        return self.writer.flush(timeout)

    @property
    def failures(self) -> int:
        """Records not written: failed, dropped (queue full), abandoned at shutdown (cds_audit_failures)."""
        return self.writer.failed + self.writer.dropped + self.writer.abandoned
