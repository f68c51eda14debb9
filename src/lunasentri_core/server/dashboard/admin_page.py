"""The administrators' pages: users, the audit log, and the plugins the server runs.

Only an administrator sees them (anyone else gets the refused page, as the API
answers 403). Users change through :class:`~lunasentri_core.services.accounts.Accounts`
as the API's routes do, so the same rules hold: a username is checked and
unique, a password long enough; nobody deletes their own account; the only
administrator cannot be made an ordinary user. A password reset token is shown
once, in the answer that issues it. The audit log reads through
:func:`lunasentri_core.services.audit.entries` a page at a time; the plugins page
shows what ``GET /api/v1/plugins`` does.
"""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from lunasentri_core.components import Principal
from lunasentri_core.errors import ConflictError, FieldError, NotFoundError, ValidationError
from lunasentri_core.model import AuditEntry, Role, User
from lunasentri_core.server.dashboard.access import Section, admin_only, signed_in
from lunasentri_core.server.dashboard.pages import (
    client_of,
    form_fields,
    hub_of,
    not_found,
    redirect,
    render,
)
from lunasentri_core.server.routes.users import accounts_of_app
from lunasentri_core.services import audit

if TYPE_CHECKING:
    from lunasentri_core.services.accounts import Accounts

AUDIT_PAGE = 50
"""Audit entries a page shows."""
AUDIT_FILTERS = ("actor", "action", "target_id", "via", "since", "until")
"""The audit page's filters, as query parameters (``before`` pages on)."""
SAVED = {
    "created": "User created.",
    "role": "Role changed; it applies from the user's next request.",
    "deleted": "User deleted.",
}
ROLES = [role.value for role in Role]


class AdminPages(Section):
    # ------------------------------------------------------------ users

    @signed_in
    @admin_only("manages users")
    async def users(self, request: Request, admin: Principal) -> Response:
        """``GET /users``: every user, and the form for a new one."""
        saved = SAVED.get(request.query_params.get("saved", ""), "")
        return await _users_page(request, admin, {"role": "user"}, saved=saved)

    @signed_in
    @admin_only("manages users")
    async def create_user(self, request: Request, admin: Principal) -> Response:
        """``POST /users``: a new user with a password and a role."""
        form = await form_fields(request)
        try:
            role = _role(form.get("role", ""))
            await _accounts(request).create_user(
                form.get("username", "").strip(),
                form.get("password", ""),
                role,
                actor=admin,
                client=client_of(request),
            )
        except ValidationError as error:
            return await _users_page(request, admin, form, problem=_problem(error), status=400)
        except ConflictError as error:
            return await _users_page(request, admin, form, problem=str(error), status=409)
        return redirect(request, "/users?saved=created")

    @signed_in
    @admin_only("manages users")
    async def set_role(self, request: Request, admin: Principal) -> Response:
        """``POST /users/{user_id}/role``: ``role=admin`` or ``role=user``."""
        form = await form_fields(request)
        try:
            await _accounts(request).set_role(
                request.path_params["user_id"],
                _role(form.get("role", "")),
                actor=admin,
                client=client_of(request),
            )
        except NotFoundError:
            return not_found(request, admin, "user")
        except ValidationError as error:
            return await _users_page(request, admin, {}, problem=_problem(error), status=400)
        except ConflictError as error:
            return await _users_page(request, admin, {}, problem=str(error), status=409)
        return redirect(request, "/users?saved=role")

    @signed_in
    @admin_only("manages users")
    async def reset_token(self, request: Request, admin: Principal) -> Response:
        """``POST /users/{user_id}/reset-token``: a one-time reset token, shown this once."""
        accounts = _accounts(request)
        try:
            target = await accounts.get_user(request.path_params["user_id"], admin)
        except NotFoundError:
            return not_found(request, admin, "user")
        issued = await accounts.issue_reset_token(target.id, actor=admin, client=client_of(request))
        context = {"user": admin, "target": target, "issued": issued}
        return render(request, "user_reset.html", context, status=201)

    @signed_in
    @admin_only("manages users")
    async def delete_form(self, request: Request, admin: Principal) -> Response:
        """``GET /users/{user_id}/delete``: ask first (yourself: refused)."""
        target = await _user(request, admin)
        if target is None:
            return not_found(request, admin, "user")
        if target.id == admin.id:
            return await _users_page(
                request, admin, {}, problem="you cannot delete your own account", status=409
            )
        machines = await hub_of(request).list_machines(owner_id=target.id)
        context = {"user": admin, "target": target, "machines": len(machines)}
        return render(request, "user_delete.html", context)

    @signed_in
    @admin_only("manages users")
    async def delete(self, request: Request, admin: Principal) -> Response:
        """``POST /users/{user_id}/delete``: the user with their machines, rules, sessions."""
        try:
            await _accounts(request).delete_user(
                request.path_params["user_id"], actor=admin, client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, admin, "user")
        except ConflictError as error:
            return await _users_page(request, admin, {}, problem=str(error), status=409)
        return redirect(request, "/users?saved=deleted")

    # ------------------------------------------------------------ audit log

    @signed_in
    @admin_only("reads the audit log")
    async def audit(self, request: Request, admin: Principal) -> Response:
        """``GET /audit``: the audit log, newest first, a page at a time, filtered."""
        params = request.query_params
        form = {name: params.get(name, "").strip() for name in AUDIT_FILTERS}
        before = params.get("before") or None
        users = await _accounts(request).list_users()
        names = {user.id: user.username for user in users}
        entries: list[AuditEntry] = []
        problem = ""
        try:
            since, until = _when(form["since"], "since"), _when(form["until"], "until")
        except ValueError as error:
            problem = str(error)
        else:
            entries = await audit.entries(
                hub_of(request),
                action=form["action"] or None,
                actor_id=_actor_id(form["actor"], users),
                target_id=form["target_id"] or None,
                via=form["via"] or None,
                since=since,
                until=until,
                before=before,
                limit=AUDIT_PAGE + 1,
            )
        shown = entries[:AUDIT_PAGE]
        filters = {name: value for name, value in form.items() if value}
        older = None
        if len(entries) > AUDIT_PAGE:
            older = "?" + urllib.parse.urlencode({**filters, "before": shown[-1].id})
        context = {
            "user": admin,
            "form": form,
            "entries": shown,
            "names": names,
            "older": older,
            "newest": "?" + urllib.parse.urlencode(filters) if before else None,
            "problem": problem,
        }
        return render(request, "audit.html", context, status=400 if problem else 200)

    # ------------------------------------------------------------ plugins

    @signed_in
    @admin_only("sees the plugins")
    async def plugins(self, request: Request, admin: Principal) -> Response:
        """``GET /plugins``: what ``GET /api/v1/plugins`` reports, as a page."""
        manager = hub_of(request).plugins
        context = {
            "user": admin,
            "plugins": sorted(manager.infos(), key=lambda info: info.name),
            "failures": manager.failures,
            "disabled": manager.disabled(),
            "stray": manager.stray_settings(),
        }
        return render(request, "plugins.html", context)


def _accounts(request: Request) -> Accounts:
    return accounts_of_app(request.app)


async def _user(request: Request, admin: Principal) -> User | None:
    try:
        return await _accounts(request).get_user(request.path_params["user_id"], admin)
    except NotFoundError:
        return None


def _role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        message = f"choose one of {', '.join(ROLES)}"
        raise ValidationError([FieldError("role", message)], what="form") from None


def _problem(error: ValidationError) -> str:
    return "; ".join(str(e) for e in error.errors)


def _actor_id(text: str, users: list[User]) -> str | None:
    """A username as its user's id; anything else (a machine's id, …) as it is."""
    if not text:
        return None
    return next((user.id for user in users if user.username == text), text)


def _when(text: str, field: str) -> datetime | None:
    """A time from the form (``datetime-local``, read as UTC, or ISO 8601 with a zone)."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: in UTC, before year 1
        raise ValueError(f"{field}: {text!r} is not a time such as 2026-01-31T14:00") from None


async def _users_page(
    request: Request,
    admin: Principal,
    form: dict[str, str],
    *,
    problem: str = "",
    saved: str = "",
    status: int = 200,
) -> Response:
    users = sorted(await _accounts(request).list_users(), key=lambda u: u.username)
    context: dict[str, Any] = {
        "user": admin,
        "users": users,
        "admins": sum(1 for u in users if u.is_admin),
        "roles": ROLES,
        # Never the password back into the page.
        "form": {k: v for k, v in form.items() if k != "password"},
        "problem": problem,
        "saved": saved,
    }
    return render(request, "users.html", context, status=status)
