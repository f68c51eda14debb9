"""JSON answers written by orjson: the JSON Starlette's ``JSONResponse`` writes, faster.

A page of the machine list with latest values is 640 KiB of JSON; the standard
encoder took about 40 % of the server's time for it (py-spy), orjson about a
tenth of that. Where orjson refuses a value (an integer beyond 64 bits, a lone
surrogate) the standard encoder writes the answer, or fails, as it always did.
One difference: a float NaN or infinity, which JSON cannot express, becomes
``null`` where the standard encoder raised (a 500).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

_OPTIONS = orjson.OPT_NON_STR_KEYS
"""Keys that are not strings written as the standard encoder writes them."""


class JsonAnswer(JSONResponse):
    """``JSONResponse`` rendered by orjson (compact, UTF-8, as Starlette's)."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=_OPTIONS)
        except TypeError:  # orjson.JSONEncodeError included
            return super().render(content)
