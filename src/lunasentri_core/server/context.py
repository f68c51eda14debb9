"""Per-request context: the request id, visible to logging and echoed in a header."""

from __future__ import annotations

import contextvars
import re
import uuid

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lunasentri_request_id", default=None
)


def new_request_id(offered: str | None) -> str:
    """Keep a caller's id when it is sane (to correlate across proxies), else make one."""
    if offered and _VALID_ID.match(offered):
        return offered
    return uuid.uuid4().hex[:16]


ROUTE_KEY = "lunasentri.route"
"""Where a route that is not an API endpoint puts its path template in the ASGI scope."""
