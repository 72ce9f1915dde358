"""Where the evaluation date comes from: a fixed date (tests, demos) or today."""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    def today(self) -> dt.date: ...


class SystemClock:
    """Today's date on this server (set ``TZ`` for the clinic's time zone)."""

    def today(self) -> dt.date:
        return dt.date.today()


class FixedClock:
    """Always the same date, so examples and tests never rot."""

    def __init__(self, date: dt.date):
        self.date = date

    def today(self) -> dt.date:
        return self.date


def clock_for(evaluation_date: dt.date | None) -> Clock:
    return FixedClock(evaluation_date) if evaluation_date else SystemClock()
