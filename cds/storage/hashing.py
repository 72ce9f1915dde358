"""Keyed hashing of patient identifiers: the audit links evaluations of one patient without storing who."""

from __future__ import annotations

import hashlib
import hmac


def hash_patient_id(key: bytes, patient_id: str) -> str:
    """HMAC-SHA256 of the patient id under a secret key, as 64 lower-case hex digits.

    The key must be secret and stable across instances (same key → same hash → evaluations of one patient
    can be linked); without the key the hash cannot be reversed by trying likely ids.
    """
    if not isinstance(key, bytes | bytearray) or len(key) < 16:
        raise ValueError("the patient hash key must be at least 16 bytes")
    if not isinstance(patient_id, str) or not patient_id:
        raise ValueError("patient_id must be a non-empty string")
    return hmac.new(bytes(key), patient_id.encode("utf-8"), hashlib.sha256).hexdigest()
