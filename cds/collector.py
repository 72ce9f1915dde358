"""The garbage collector's settings for a serving process, applied once start-up is done.

A hook call allocates tens of thousands of objects (a long history's JSON alone ~50,000), nearly all
freed by reference counting when the call ends. The collector's defaults still run a *full* collection
whenever the objects promoted to its oldest generation grow by a quarter, which such calls reach every
few requests: each full collection walks every live object (the caches of validated FHIR models
included) and was the long-history p99 (bench/bench_core.py: ~35 full collections in 300 calls, up to
75 ms each, p99 87 ms; with the settings below none in 300 calls, p99 13 ms).

- ``gc.freeze()``: the start-up objects (modules, FHIR model classes, the compiled rule set) leave the
  collector's generations for good;
- the oldest generation's threshold 10 -> 1,000: a full collection after 1,000 collections of the
  middle one (about 7 million net allocations) instead of 10. Young collections are unchanged, and
  cycles are still collected (their memory is reclaimed later, not leaked: the 100,000-evaluation
  memory check in bench/bench_core.py runs with these settings).
"""

from __future__ import annotations

import gc

#: the oldest generation's threshold (CPython's default is 10)
FULL_COLLECTION_THRESHOLD = 1000


def settle_after_start_up() -> None:
    """Freeze the start-up objects and make full collections rare (see the module's text)."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_THRESHOLD)
