"""The facts an order check (``order_checks`` in the rule files) is written against.

An order check reads the patient's assessment (every fact of :data:`cds.assessment.FACT_FIELDS`) plus
the facts of one draft order and of the decision the patient-view rules took for the same patient.
Unknown values are absent, so a comparison on them never matches (as in the rules).
"""

from __future__ import annotations

import typing

from .assessment import FACT_FIELDS
from .ruleset.schema import Decision

#: name -> (type, meaning) of the order facts; the rule checker and the docs read this table
ORDER_FACT_FIELDS: dict[str, tuple[type, str]] = {
    "ordered_exercise": (str, "ladder code of the draft order's exercise"),
    "ordered_rung": (int, "ladder position of the draft order's exercise (1 = first rung)"),
    "recommended_exercise": (str, "ladder code of the exercise the patient-view rules recommend"),
    "recommended_rung": (int, "ladder position of the exercise the patient-view rules recommend"),
    "rungs_above_recommended": (int, "ordered_rung minus recommended_rung: 1 = one rung too high, 0 = the same, "
                                     "negative = easier than recommended"),
    "decision": (str, "decision of the patient-view card that recommends an exercise, else of its first card"),
}

#: string facts whose values are not ladder codes: the values a condition may compare them with
ORDER_FACT_VALUES: dict[str, tuple[str, ...]] = {"decision": typing.get_args(Decision)}


def order_check_fact_types() -> dict[str, type]:
    """Every fact an order check's ``when`` may name, with its type."""
    return {name: kind for name, (kind, _) in {**FACT_FIELDS, **ORDER_FACT_FIELDS}.items()}


__all__ = ["ORDER_FACT_FIELDS", "ORDER_FACT_VALUES", "ORDER_PLACEHOLDERS", "order_check_fact_types"]

#: placeholders of order-check texts beyond the card placeholders: name -> the card placeholder of the
#: same kind (its length bound is used for the summary check)
ORDER_PLACEHOLDERS: dict[str, str] = {
    "ordered": "recommended",  # ladder code of the draft order's exercise
    "ordered_name": "recommended_name",  # its ladder display name
}
