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
from starlette.types import ASGIApp, Receive, Scope, Send

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
        self.trusted = trusted_origins_of(trusted_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and await refuse_cross_site(scope, receive, send, self.trusted):
            return
        await self.app(scope, receive, send)


def trusted_origins_of(origins: Iterable[str]) -> frozenset[str]:
    """The origins (``scheme://host[:port]``) of ``origins``, those without one left out."""
    # A wildcard CORS origin lets anyone read; it never lets anyone write by cookie.
    return frozenset(origin for origin in map(origin_of, origins) if origin is not None)


async def refuse_cross_site(
    scope: Scope, receive: Receive, send: Send, trusted: frozenset[str]
) -> bool:
    """Answer 403 to an HTTP request that another site's page may have made; whether it did."""
    if scope["method"] in SAFE_METHODS:
        return False
    why = cross_site_refusal(scope["method"], Headers(scope=scope), trusted)
    if why is None:
        return False
    response = error_response(403, "cross_site", why, "origin")
    await response(scope, receive, send)
    return True


class SecurityHeaderSet:
    """``X-Content-Type-Options: nosniff`` on every response, and HSTS over HTTPS.

    HTTPS means the server's own TLS, or a proxy's ``X-Forwarded-Proto: https``
    from an address uvicorn trusts (``forwarded_allow_ips``, loopback by default).
    The server's request layer (:class:`~lunasentri_core.server.app.RequestContextMiddleware`)
    adds them with :func:`with_headers`.
    """

    def __init__(self, hsts_max_age: int) -> None:
        nosniff = (b"x-content-type-options", b"nosniff")
        self.http: tuple[tuple[bytes, bytes], ...] = (nosniff,)
        self.https: tuple[tuple[bytes, bytes], ...] = self.http
        if hsts_max_age > 0:
            self.https = (
                nosniff,
                (b"strict-transport-security", f"max-age={hsts_max_age}".encode()),
            )

    def for_scope(self, scope: Scope) -> tuple[tuple[bytes, bytes], ...]:
        return self.https if scope.get("scheme") == "https" else self.http


def with_headers(
    headers: Iterable[tuple[bytes, bytes]], added: Iterable[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """``headers`` and those of ``added`` they do not have already (names in lower case)."""
    headers = list(headers)
    present = {key.lower() for key, _ in headers}
    headers.extend(pair for pair in added if pair[0] not in present)
    return headers
