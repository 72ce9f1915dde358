"""One exception hierarchy: every public exception class of the package derives from ``CdsError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import cds
from cds.errors import CdsError


def _public_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(cds.__path__, "cds."):
        if info.name.startswith("cds.migrations") or info.name in ("cds.__main__", "cds.wsgi"):
            continue  # migrations run under alembic; __main__ and wsgi start the service on import
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
                    and not name.startswith("_")):
                found[f"{info.name}.{name}"] = obj
    return list(found.values())


def test_every_public_exception_derives_from_cds_error() -> None:
    classes = _public_exceptions()
    assert len(classes) >= 15  # the walk really found the package's exceptions
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, CdsError))
    assert outside == []


def test_built_in_kinds_are_kept_for_callers_that_catch_them() -> None:
    from cds.config import ConfigError
    from cds.fhir_client import PrefetchUnavailable
    from cds.ruleset.conditions import ConditionError

    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConditionError, ValueError)
    assert issubclass(PrefetchUnavailable, LookupError)
