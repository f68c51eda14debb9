"""The silences page: the user's silences (active, planned, ended), a form that
silences a machine, a label selector or a rule for a while, and ending one early.

Created and ended through :class:`~lunasentri_core.services.notifications.Silences`,
as the API's routes do: a silence needs a machine, labels or a rule (every one
given must match), a machine or rule must be the user's, and it lasts at most
``MAX_SILENCE``. A mistake shows the form again with what is wrong.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from lunasentri_core.codec import parse_duration
from lunasentri_core.components import Principal
from lunasentri_core.errors import NotFoundError, ValidationError
from lunasentri_core.model import Silence
from lunasentri_core.server.dashboard.access import Section, signed_in
from lunasentri_core.server.dashboard.alerts_page import names
from lunasentri_core.server.dashboard.manage import BadForm, parse_labels
from lunasentri_core.server.dashboard.pages import (
    client_of,
    form_fields,
    hub_of,
    redirect,
    render,
)
from lunasentri_core.services.notifications import MAX_SILENCE, Silences

DURATIONS = {"15m": "15 minutes", "1h": "1 hour", "4h": "4 hours", "1d": "1 day"}
DEFAULT_DURATION = "1h"


class SilencesPage(Section):
    @signed_in
    async def page(self, request: Request, user: Principal) -> Response:
        """``GET /silences``: the list and the form (``?machine=<id>`` picks that machine)."""
        params = request.query_params
        form = {"machine_id": params.get("machine", ""), "duration": DEFAULT_DURATION}
        return await _page(request, user, form, saved=params.get("saved", ""))

    @signed_in
    async def create(self, request: Request, user: Principal) -> Response:
        """``POST /silences``: silence for the chosen duration, from now."""
        form = await form_fields(request)
        try:
            await Silences(hub_of(request)).create(
                user,
                duration=_duration(form.get("duration", ""), form.get("custom", "")),
                machine_id=form.get("machine_id") or None,
                labels=parse_labels(form.get("labels", "")),
                rule_id=form.get("rule_id") or None,
                comment=form.get("comment", "").strip(),
                client=client_of(request),
            )
        except (BadForm, ValidationError, NotFoundError) as error:
            return await _page(request, user, form, problem=_problem(error), status=400)
        return redirect(request, "/silences?saved=created")

    @signed_in
    async def end(self, request: Request, user: Principal) -> Response:
        """``POST /silences/{silence_id}/end``: end it now, as the API's ``DELETE``."""
        try:
            await Silences(hub_of(request)).end(
                user, request.path_params["silence_id"], client=client_of(request)
            )
        except NotFoundError:
            context = {"user": user, "what": "silence"}
            return render(request, "not_found.html", context, status=404)
        return redirect(request, "/silences?saved=ended")


def _duration(choice: str, custom: str) -> timedelta:
    text = custom.strip() if choice == "custom" else choice
    if choice != "custom" and choice not in DURATIONS:
        raise BadForm("choose a duration")
    try:
        duration = parse_duration(text)
    except (TypeError, ValueError):
        raise BadForm(f"{text!r} is not a duration such as 90m, 2h or 3d") from None
    if not timedelta(0) < duration <= MAX_SILENCE:
        raise BadForm(f"a silence lasts more than 0 and at most {MAX_SILENCE.days} days")
    return duration


def _problem(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(str(e) for e in error.errors)
    if isinstance(error, NotFoundError):
        return "no such machine or rule"
    return str(error)


async def _page(
    request: Request,
    user: Principal,
    form: dict[str, str],
    *,
    problem: str = "",
    saved: str = "",
    status: int = 200,
) -> Response:
    machines, rules = await names(request, user)
    now = hub_of(request).clock()
    silences = await Silences(hub_of(request)).all(user)
    rows = [_row(s, now, machines, rules) for s in sorted(silences, key=_newest_first)]
    context = {
        "user": user,
        "silences": rows,
        "machines": machines,
        "rules": rules,
        "durations": DURATIONS,
        "form": form,
        "problem": problem,
        "saved": saved,
    }
    return render(request, "silences.html", context, status=status)


def _newest_first(silence: Silence) -> tuple[float, str]:
    return -silence.starts_at.timestamp(), silence.id


def _row(
    silence: Silence, now: datetime, machines: dict[str, str], rules: dict[str, str]
) -> dict[str, Any]:
    state = "active" if silence.active(now) else "planned" if now < silence.starts_at else "ended"
    machine = silence.machine_id
    return {
        "silence": silence,
        "state": state,
        "machine": machines.get(machine, machine) if machine else None,
        "rule": rules.get(silence.rule_id, silence.rule_id) if silence.rule_id else None,
    }
