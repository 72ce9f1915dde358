"""The service's exception base.

Every error that the service raises on purpose (bad configuration, invalid rule files, a request that
cannot be evaluated, an unavailable store, ...) derives from :class:`CdsError`, so an entry point can
tell "a problem we describe to the operator" from a bug: catch ``CdsError``, print its message (which
names what is wrong, e.g. the variable), exit non-zero; let anything else propagate with its traceback.

Every public exception class of the package derives from it (``tests/test_errors.py`` checks that); where
callers expect a built-in kind (``ValueError``, ``LookupError``, ``RuntimeError``) the class keeps it as a
second base.
"""

from __future__ import annotations


class CdsError(Exception):
    """Base of the service's own errors; ``str(error)`` is a message fit for an operator."""
