"""Who may see a page: :func:`signed_in` gives a page handler the signed-in user and
sends anyone else to log in (:func:`~.pages.to_login`, htmx included); under it,
:func:`admin_only` refuses anyone but an administrator."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from lunasentri_core.components import Principal
from lunasentri_core.server.dashboard.pages import render, to_login

if TYPE_CHECKING:
    from lunasentri_core.server.dashboard.pages import Pages


class Section:
    """A part of the dashboard (its handlers are methods, see :func:`signed_in`)."""

    def __init__(self, pages: Pages) -> None:
        self.pages = pages


S = TypeVar("S", bound=Section)


def signed_in(
    handler: Callable[[S, Request, Principal], Awaitable[Response]],
) -> Callable[[S, Request], Awaitable[Response]]:
    """The page ``handler`` for the signed-in user; anyone else is sent to log in."""

    @functools.wraps(handler)
    async def page(self: S, request: Request) -> Response:
        user = await self.pages.user(request)
        if user is None:
            return to_login(request)
        return await handler(self, request, user)

    return page


def admin_only(
    what: str,
) -> Callable[
    [Callable[[S, Request, Principal], Awaitable[Response]]],
    Callable[[S, Request, Principal], Awaitable[Response]],
]:
    """Under :func:`signed_in`: the page ``handler`` for an administrator; any other user
    gets the refused page (403), saying "Only an administrator ``what``."."""

    def only(
        handler: Callable[[S, Request, Principal], Awaitable[Response]],
    ) -> Callable[[S, Request, Principal], Awaitable[Response]]:
        @functools.wraps(handler)
        async def page(self: S, request: Request, user: Principal) -> Response:
            if not user.is_admin:
                context = {"user": user, "message": f"Only an administrator {what}."}
                return render(request, "refused.html", context, status=403)
            return await handler(self, request, user)

        return page

    return only
