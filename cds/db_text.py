"""Text the database will accept: a pydantic string type for request fields that end up in a column.

A value the database would refuse or mangle is a validation error (so a 400 naming the field) instead of a
driver error at write time (a 500, with the statement's parameters in the driver's message):

- a lone surrogate (``"\\ud800"``): not encodable as UTF-8, the column encoding of every backend;
- NUL (``"\\x00"``): PostgreSQL ``text``/``varchar`` cannot hold it;
- more characters than the column holds (``VARCHAR(n)`` counts characters on PostgreSQL).

The column lengths are declared here once (``*_LENGTH``); :mod:`cds.storage.models` builds its columns from
them, so a request field and its column cannot disagree. Pure module: no Flask, no database.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from .ruleset.schema import Coding

__all__ = [
    "OVERRIDE_CODE_LENGTH",
    "OVERRIDE_DISPLAY_LENGTH",
    "OVERRIDE_SYSTEM_LENGTH",
    "DbText",
    "StoredCoding",
    "db_text_problem",
]

_REFUSED = re.compile(r"[\x00\ud800-\udfff]")


def db_text_problem(value: str, max_length: int | None = None) -> str | None:
    """Why the database would refuse ``value`` (a message without the value), or None."""
    bad = _REFUSED.search(value)
    if bad is not None:
        what = "NUL character" if bad.group() == "\x00" else "lone surrogate (not valid Unicode text)"
        return f"must not contain a {what} (at character {bad.start() + 1})"
    if max_length is not None and len(value) > max_length:
        return f"must be at most {max_length} characters (got {len(value)})"
    return None


def _no_refused_characters(value: str) -> str:
    problem = db_text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


#: stored text without a length limit of its own (a TEXT column)
DbText = Annotated[str, AfterValidator(_no_refused_characters)]

OVERRIDE_SYSTEM_LENGTH = 512
OVERRIDE_CODE_LENGTH = 256
OVERRIDE_DISPLAY_LENGTH = 512


class StoredCoding(Coding):
    """A :class:`~cds.ruleset.schema.Coding` received in a request and stored in the feedback table
    (``override_system``/``override_code``/``override_display``): the columns' lengths, storable text."""

    system: Annotated[DbText, Field(min_length=1, max_length=OVERRIDE_SYSTEM_LENGTH)]
    code: Annotated[DbText, Field(min_length=1, max_length=OVERRIDE_CODE_LENGTH)]
    display: Annotated[DbText, Field(max_length=OVERRIDE_DISPLAY_LENGTH)] | None = None
