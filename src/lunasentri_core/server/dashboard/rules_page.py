"""The rules page: the user's alert rules, creating and editing one (the fields of
the API's rule body), enabling or disabling it, and deleting it after asking.

Changes go through :class:`~lunasentri_core.services.rules.Rules`, as the API's
routes do, so the same checks apply and a mistake shows the form again with the
API's message and what was typed. Another user's rule is "not found". A rule's
page previews what it watches now: the newest value of its metric on each machine
its scope matches, read from the latest-values table (one page of machines).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from lunasentri_core.codec import parse_duration
from lunasentri_core.components import Principal
from lunasentri_core.errors import NotFoundError, ValidationError
from lunasentri_core.model import AlertRule, Comparison, RuleScope, Severity
from lunasentri_core.server.dashboard.access import Section, signed_in
from lunasentri_core.server.dashboard.alerts_page import names
from lunasentri_core.server.dashboard.manage import BadForm, labels_text, parse_labels
from lunasentri_core.server.dashboard.pages import (
    client_of,
    enabled_choice,
    form_fields,
    hub_of,
    not_found,
    redirect,
    render,
)
from lunasentri_core.services.machines import MachineFilter, Machines, SeriesFilter
from lunasentri_core.services.rules import Rules

PREVIEW_MACHINES = 50
"""Machines the preview reads at most (it says when there are more)."""
SAVED = frozenset(("created", "updated", "enabled", "disabled", "deleted"))
"""What ``?saved=`` may say happened (anything else says nothing)."""
NEW_RULE = {"comparison": ">", "severity": "warning", "for_duration": "0"}


class RulesPage(Section):
    @signed_in
    async def page(self, request: Request, user: Principal) -> Response:
        """``GET /rules``: the list and the form for a new rule."""
        return await _list(request, user, dict(NEW_RULE), saved=request.query_params.get("saved"))

    @signed_in
    async def create(self, request: Request, user: Principal) -> Response:
        """``POST /rules``: a new rule, enabled."""
        form = await form_fields(request)
        try:
            await Rules(hub_of(request)).create(user, client=client_of(request), **_fields(form))
        except (BadForm, ValidationError) as error:
            return await _list(request, user, form, problem=_problem(error), status=400)
        return redirect(request, "/rules?saved=created")

    @signed_in
    async def edit(self, request: Request, user: Principal) -> Response:
        """``GET /rules/{rule_id}``: the rule's form and what it matches now."""
        rule = await self._rule(request, user)
        if rule is None:
            return not_found(request, user, "alert rule")
        saved = request.query_params.get("saved")
        return await _edit(request, user, rule, _form_of(rule), saved=saved)

    @signed_in
    async def update(self, request: Request, user: Principal) -> Response:
        """``POST /rules/{rule_id}``: change its fields (its series start over if the
        condition changed, as with the API's ``PATCH``)."""
        form = await form_fields(request)
        rule_id = request.path_params["rule_id"]
        rules = Rules(hub_of(request))
        try:
            await rules.update(user, rule_id, client=client_of(request), **_fields(form))
        except NotFoundError:
            return not_found(request, user, "alert rule")
        except (BadForm, ValidationError) as error:
            rule = await self._rule(request, user)
            if rule is None:
                return not_found(request, user, "alert rule")
            return await _edit(request, user, rule, form, problem=_problem(error), status=400)
        return redirect(request, f"/rules/{rule_id}?saved=updated")

    @signed_in
    async def enable(self, request: Request, user: Principal) -> Response:
        """``POST /rules/{rule_id}/enabled``: ``enabled=true`` or ``false``."""
        enabled = await enabled_choice(request, user, "rule")
        if isinstance(enabled, Response):
            return enabled
        try:
            await Rules(hub_of(request)).update(
                user,
                request.path_params["rule_id"],
                enabled=enabled,
                client=client_of(request),
            )
        except NotFoundError:
            return not_found(request, user, "alert rule")
        return redirect(request, "/rules?saved=" + ("enabled" if enabled else "disabled"))

    @signed_in
    async def delete_form(self, request: Request, user: Principal) -> Response:
        """``GET /rules/{rule_id}/delete``: ask first."""
        rule = await self._rule(request, user)
        if rule is None:
            return not_found(request, user, "alert rule")
        return render(request, "rule_delete.html", {"user": user, "rule": rule})

    @signed_in
    async def delete(self, request: Request, user: Principal) -> Response:
        """``POST /rules/{rule_id}/delete``: the rule, its series' states and events."""
        try:
            await Rules(hub_of(request)).delete(
                user, request.path_params["rule_id"], client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, user, "alert rule")
        return redirect(request, "/rules?saved=deleted")

    async def _rule(self, request: Request, user: Principal) -> AlertRule | None:
        try:
            return await Rules(hub_of(request)).get(user, request.path_params["rule_id"])
        except NotFoundError:
            return None


def _fields(form: dict[str, str]) -> dict[str, Any]:
    """The form as the service's arguments; what the API's decoder would refuse is a BadForm."""
    return {
        "name": form.get("name", "").strip(),
        "metric": form.get("metric", "").strip(),
        "comparison": _choice(Comparison, form.get("comparison", ""), "comparison"),
        "threshold": _threshold(form.get("threshold", "")),
        "for_duration": _for_duration(form.get("for_duration", "")),
        "scope": RuleScope(
            machine_id=form.get("machine_id") or None,
            labels=parse_labels(form.get("labels", "")),
        ),
        "severity": _choice(Severity, form.get("severity", ""), "severity"),
    }


def _choice(kind: type[Comparison] | type[Severity], text: str, field: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise BadForm(f"{field}: choose one of {', '.join(m.value for m in kind)}") from None


def _threshold(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise BadForm(f"threshold: {text!r} is not a number") from None


def _for_duration(text: str) -> timedelta:
    text = text.strip() or "0"
    try:
        return parse_duration(float(text) if _numeric(text) else text)
    except (TypeError, ValueError):
        raise BadForm(f"for_duration: {text!r} is not a duration such as 300, 5m or 1h") from None


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _problem(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(str(e) for e in error.errors)
    return str(error)


def _form_of(rule: AlertRule) -> dict[str, str]:
    seconds = rule.for_duration.total_seconds()
    return {
        "name": rule.name,
        "metric": rule.metric,
        "comparison": rule.comparison.value,
        "threshold": f"{rule.threshold:g}",
        "for_duration": f"{seconds:g}",
        "machine_id": rule.scope.machine_id or "",
        "labels": labels_text(rule.scope.labels),
        "severity": rule.severity.value,
    }


async def _context(request: Request, user: Principal, form: dict[str, str]) -> dict[str, Any]:
    machines, _ = await names(request, user)
    return {
        "user": user,
        "form": form,
        "machines": machines,
        "comparisons": [c.value for c in Comparison],
        "severities": [s.value for s in Severity],
    }


async def _list(
    request: Request,
    user: Principal,
    form: dict[str, str],
    *,
    problem: str = "",
    saved: str | None = None,
    status: int = 200,
) -> Response:
    context = await _context(request, user, form)
    rules = sorted(await Rules(hub_of(request)).all(user), key=lambda r: (r.name, r.id))
    context.update(rules=rules, problem=problem, saved=saved if saved in SAVED else "")
    return render(request, "rules.html", context, status=status)


async def _edit(
    request: Request,
    user: Principal,
    rule: AlertRule,
    form: dict[str, str],
    *,
    problem: str = "",
    saved: str | None = None,
    status: int = 200,
) -> Response:
    context = await _context(request, user, form)
    context.update(rule=rule, problem=problem, saved=saved if saved in SAVED else "")
    context.update(await _preview(request, user, rule))
    return render(request, "rule_edit.html", context, status=status)


async def _preview(request: Request, user: Principal, rule: AlertRule) -> dict[str, Any]:
    """The machines the rule's scope matches now (of its owner: the evaluator applies a
    rule to those only) and the newest value of its metric on each."""
    scope = rule.scope
    found = await Machines(hub_of(request), request.app.state.full_settings).latest(
        user,
        filters=MachineFilter(labels=scope.labels),
        ids=(scope.machine_id,) if scope.machine_id else (),
        series=SeriesFilter(metric=rule.metric),
        limit=PREVIEW_MACHINES,
    )
    rows = []
    for item in found.items:
        if item.machine.owner_id not in (rule.owner_id, None):
            continue
        values = item.items + item.derived
        rows.append(
            {
                "machine": item.machine,
                "values": [
                    {"value": v, "holds": rule.comparison.holds(v.value, rule.threshold)}
                    for v in values
                ],
            }
        )
    return {"preview": rows, "preview_more": found.next_after is not None}
