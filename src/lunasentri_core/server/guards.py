"""Middleware that protects every route the same way: cross-site writes and response headers.

Cross-site request forgery: a browser sends the session cookie with any request
to this server, whichever site's page made it. What such a page cannot forge is
where the request came from: ``Sec-Fetch-Site``, ``Origin`` and ``Referer`` are
set by the browser alone. So a state-changing request is refused (403) unless
those headers show it comes from this server or an allowed CORS origin. The
check sits in front of every route (API, dashboard forms, plugin routes), so a
form added later is protected without doing anything. It follows Go 1.25's
``http.CrossOriginProtection`` and OWASP's CSRF cheat sheet (fetch metadata,
then the standard origin headers), with Django's stricter rule for requests
that carry the session cookie but none of those headers: they are refused.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lunasentri_core.builtin import SESSION_COOKIE
from lunasentri_core.server.errors import error_response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
SCRIPT_ONLY_CREDENTIALS = ("authorization", "x-api-key")
"""Headers only a script can add, and across origins only after a CORS preflight
that this server answers for its allowed origins alone: a request carrying them
cannot be forged by another site's page, so it is not checked."""


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of ``url`` in lower case, or ``None`` if it has none."""
    parts = urllib.parse.urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def cross_site_refusal(
    method: str, headers: Mapping[str, str], trusted: frozenset[str]
) -> str | None:
    """Why a request is refused as possibly forged by another site, or ``None`` to let it pass.

    :param headers: The request's headers, by lower-case name (cookies are read from
        them only when nothing else decides: agents' requests never parse them).
    :param trusted: Origins (``scheme://host[:port]``) besides the request's own host.
    """
    if method in SAFE_METHODS or any(name in headers for name in SCRIPT_ONLY_CREDENTIALS):
        return None
    # Fetch metadata cannot be set by a page; "none" is the user's own action.
    if headers.get("sec-fetch-site") in ("same-origin", "none"):
        return None
    claimed = headers.get("origin") or headers.get("referer")
    if claimed is not None:
        origin = origin_of(claimed)
        own = headers.get("host", "").lower()
        if origin is not None and (origin in trusted or origin.split("://", 1)[1] == own):
            return None
        return f"a request from {claimed!r} may not change anything here"
    if SESSION_COOKIE in cookie_parser(headers.get("cookie", "")):
        return "a request authenticated by the session cookie must come with an Origin header"
    if "sec-fetch-site" in headers:
        return f"a {headers['sec-fetch-site']} request may not change anything here"
    return None  # not a browser: curl, agents, scripts without the cookie


class CrossSiteGuard:
    """Refuse state-changing requests that another site's page may have made (403)."""

    def __init__(self, app: ASGIApp, trusted_origins: Iterable[str]) -> None:
        self.app = app
        # A wildcard CORS origin lets anyone read; it never lets anyone write by cookie.
        self.trusted = frozenset(
            origin for origin in map(origin_of, trusted_origins) if origin is not None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            why = cross_site_refusal(scope["method"], Headers(scope=scope), self.trusted)
            if why is not None:
                response = error_response(403, "cross_site", why, "origin")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """``X-Content-Type-Options: nosniff`` on every response, and HSTS over HTTPS.

    HTTPS means the server's own TLS, or a proxy's ``X-Forwarded-Proto: https``
    from an address uvicorn trusts (``forwarded_allow_ips``, loopback by default).
    """

    def __init__(self, app: ASGIApp, hsts_max_age: int) -> None:
        self.app = app
        self.hsts = f"max-age={hsts_max_age}".encode() if hsts_max_age > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = [(b"x-content-type-options", b"nosniff")]
        if self.hsts is not None and scope.get("scheme") == "https":
            added.append((b"strict-transport-security", self.hsts))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {key.lower() for key, _ in message.get("headers", [])}
                extra = [(key, value) for key, value in added if key not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
