"""What the agentless pages share: "load it or not found", the
form readers and their :class:`FieldProblem`, and the delete confirmation page."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from lunasentri_core.components import Principal
from lunasentri_core.errors import ConflictError, InUseError, NotFoundError, ValidationError
from lunasentri_core.model import CredentialProfile, Device
from lunasentri_core.server.dashboard.manage import BadForm
from lunasentri_core.server.dashboard.pages import ago, client_of, hub_of, render
from lunasentri_core.services.monitors import Devices, check_interval, check_options

SAVED = frozenset(
    (
        "created",
        "updated",
        "deleted",
        "enabled",
        "disabled",
        "polled",
        "added",
    )
)
"""What ``?saved=`` may say happened (anything else says nothing)."""

T = TypeVar("T")


async def found_or_none(lookup: Awaitable[T]) -> T | None:
    """What ``lookup`` finds, or ``None`` where it is not found (or not the user's)."""
    try:
        return await lookup
    except NotFoundError:
        return None


class FieldProblem(BadForm):
    """A form field's value the page could not read, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def problem_of(error: Exception) -> tuple[str, str]:
    """The message for the page and the form field it is about (``""``: none)."""
    if isinstance(error, ValidationError):
        path = error.first_path or ""
        return "; ".join(str(e) for e in error.errors), re.split(r"[\[.]", path)[0]
    if isinstance(error, FieldProblem):
        return str(error), error.field
    return str(error), ""


def named_problem(error: Exception) -> tuple[str, str, int]:
    """:func:`problem_of` and the status, for a form of a named record: a conflict is
    its name's (409), anything else a bad field (400)."""
    problem, bad = problem_of(error)
    if isinstance(error, ConflictError):
        return problem, "name", 409
    return problem, bad, 400


def saved_of(request: Request) -> str:
    saved = request.query_params.get("saved", "")
    return saved if saved in SAVED else ""


def optional(form: Mapping[str, str], name: str) -> str | None:
    return form.get(name, "").strip() or None


def number(form: Mapping[str, str], name: str, kind: Callable[[str], Any]) -> Any:
    text = form.get(name, "").strip()
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise FieldProblem(name, f"{text!r} is not {what}") from None


def seconds_of(form: Mapping[str, str], name: str) -> timedelta:
    seconds = number(form, name, float)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN, infinity
        raise FieldProblem(name, "must be a finite number of seconds")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise FieldProblem(name, f"{seconds:g} seconds is too long") from None


def interval_of(form: Mapping[str, str]) -> timedelta:
    return check_interval(seconds_of(form, "interval"))


def options_of(form: Mapping[str, str]) -> dict[str, Any]:
    text = form.get("options", "").strip() or "{}"
    try:
        options = json.loads(text)
    except ValueError as error:
        raise FieldProblem("options", f"not JSON: {error}") from None
    if not isinstance(options, dict):
        raise FieldProblem("options", 'must be a JSON object, such as {"key": "value"}')
    return check_options(options)


def _when(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "never"
    return f"{at.strftime('%Y-%m-%d %H:%M:%S')} UTC ({ago(at, now)})"


def times(request: Request) -> dict[str, Any]:
    """The templates' ``when`` and ``ago``, against the hub's clock."""
    now = hub_of(request).clock()
    return {"when": lambda at: _when(at, now), "ago": lambda at: ago(at, now)}


def device_name(device: Device | None) -> str:
    if device is None:
        return "(device gone)"
    return f"{device.hostname} ({device.address})" if device.hostname else device.address


def by_name(profiles: Sequence[CredentialProfile]) -> list[CredentialProfile]:
    return sorted(profiles, key=lambda p: (p.name, p.id))


def choices(profiles: Sequence[CredentialProfile]) -> list[tuple[str, str]]:
    return [(p.id, p.name) for p in by_name(profiles)]


def in_use(error: InUseError) -> str:
    counts = ", ".join(f"{len(ids)} {kind.replace('_', ' ')}" for kind, ids in error.users.items())
    return f"It is in use by {counts}: change or delete those first. ({error})"


async def add_device(request: Request, user: Principal, address: str, *, field: str) -> Device:
    if not address:
        raise FieldProblem(field, "give a host name or an IP address")
    return await Devices(hub_of(request)).add(user, address, client=client_of(request))


def delete_page(
    request: Request,
    user: Principal,
    *,
    what: str,
    name: str,
    action: str,
    back: str,
    warning: str,
    problem: str = "",
    status: int = 200,
) -> Response:
    """The page that asks before ``action`` deletes ``what`` (or says why it did not)."""
    context = {
        "user": user,
        "sub": "",
        "what": what,
        "name": name,
        "action": action,
        "back": back,
        "warning": warning,
        "problem": problem,
    }
    return render(request, "agentless_delete.html", context, status=status)
