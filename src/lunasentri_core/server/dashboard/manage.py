"""The dashboard's forms that change things: register, claim, relabel, set the agent's
configuration, rotate, revoke, delete.

Each goes through the same service, owner scoping and role rule as its API
route (a user manages their own machines, an administrator any; only an
administrator claims agents), so a form can do nothing the API would refuse
the same user. Cross-site posts never get here: the server's cross-site guard
refuses them first (docs/server.md). A refused or mistaken form is shown again
with what was wrong, in the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import Response

from lunasentri_core.components import Principal
from lunasentri_core.errors import ConflictError, FieldError, NotFoundError, ValidationError
from lunasentri_core.model import LABEL_NAME, Labels, Machine
from lunasentri_core.server.agent_dist import DistError, manual_install
from lunasentri_core.server.dashboard.access import Section, signed_in
from lunasentri_core.server.dashboard.pages import (
    client_of,
    form_fields,
    form_lists,
    hub_of,
    not_found,
    redirect,
    render,
)
from lunasentri_core.services.claims import Claims, ClaimTokenMismatch
from lunasentri_core.services.machines import (
    AGENT_PACKAGES,
    MAX_COLLECTORS,
    EffectiveConfig,
    Machines,
)


class BadForm(Exception):
    """What is wrong with a form's fields, in words for the page."""


def parse_labels(text: str) -> Labels:
    """``env:prod, role:db`` (as the overview's filter takes them) as labels."""
    pairs: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition(":")
        if not sep or not LABEL_NAME.match(name.strip()):
            raise BadForm(f"{item!r} is not a label as name:value (e.g. env:prod)")
        pairs[name.strip()] = value.strip()
    return tuple(sorted(pairs.items()))


def labels_text(labels: Labels) -> str:
    return ", ".join(f"{name}:{value}" for name, value in labels)


def _problem(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(str(e) for e in error.errors)
    return str(error)


class Manage(Section):
    def _machines(self, request: Request) -> Machines:
        return Machines(hub_of(request), request.app.state.full_settings)

    # ------------------------------------------------------------ registering

    @signed_in
    async def new_form(self, request: Request, user: Principal) -> Response:
        """``GET /machines/new``: the registration form."""
        return _new_page(request, user, {})

    @signed_in
    async def create(self, request: Request, user: Principal) -> Response:
        """``POST /machines/new``: register; the answer shows the key, this once."""
        form = await form_fields(request)
        try:
            labels = parse_labels(form.get("labels", ""))
            wheels, install_error = await _agent_wheels(request)
            registered = await self._machines(request).create(
                user,
                form.get("name", ""),
                labels=labels,
                client=client_of(request),
                install_from=wheels,
            )
        except (BadForm, ValidationError, ConflictError) as error:
            status = 409 if isinstance(error, ConflictError) else 400
            return _new_page(request, user, form, _problem(error), status)
        context = {
            "user": user,
            "machine": registered.machine,
            "api_key": registered.issued.secret,
            "install_command": registered.install_command,
            "install_error": install_error,
        }
        return render(request, "registered.html", context, status=201)

    # ------------------------------------------------------------ claims

    @signed_in
    async def pending(self, request: Request, user: Principal) -> Response:
        """``GET /agents/pending``: registrations waiting for an administrator."""
        if not user.is_admin:
            return _admins_only(request, user)
        return await self._pending_page(request, user)

    async def _pending_page(
        self,
        request: Request,
        user: Principal,
        problem: str = "",
        form: dict[str, str] | None = None,
        status: int = 200,
    ) -> Response:
        claims = await _claims(request).pending()
        context = {"user": user, "claims": claims, "problem": problem, "form": form or {}}
        return render(request, "pending.html", context, status=status)

    @signed_in
    async def claim(self, request: Request, user: Principal) -> Response:
        """``POST /agents/{agent_id}/claim``: claim with the agent's token, name and labels."""
        if not user.is_admin:
            return _admins_only(request, user)
        form = await form_fields(request)
        agent_id = request.path_params["agent_id"]
        try:
            machine = await _claims(request).claim(
                user,
                agent_id,
                form.get("claim_token", "").strip(),
                form.get("name", ""),
                labels=parse_labels(form.get("labels", "")),
                client=client_of(request),
            )
        except (BadForm, ValidationError, ConflictError, ClaimTokenMismatch) as error:
            status = {ConflictError: 409, ClaimTokenMismatch: 403}.get(type(error), 400)
            form["agent_id"] = agent_id
            return await self._pending_page(request, user, _problem(error), form, status)
        except NotFoundError:
            return not_found(request, user, "pending agent")
        return redirect(request, f"/machines/{machine.id}")

    # ------------------------------------------------------------ one machine

    async def _mine(self, request: Request, user: Principal) -> Machine | None:
        """The user's machine the path names (``None``: not found, or not theirs)."""
        try:
            return await self._machines(request).get(user, request.path_params["machine_id"])
        except NotFoundError:
            return None

    @signed_in
    async def labels(self, request: Request, user: Principal) -> Response:
        """``POST /machines/{id}/labels``: replace the machine's labels."""
        machine = await self._mine(request, user)
        if machine is None:
            return not_found(request, user, "machine")
        form = await form_fields(request)
        try:
            await self._machines(request).update(
                user,
                machine.id,
                labels=parse_labels(form.get("labels", "")),
                client=client_of(request),
            )
        except (BadForm, ValidationError) as error:
            return await self._settings_page(request, user, machine, _problem(error), form)
        return redirect(request, f"/machines/{machine.id}/settings?saved=labels")

    @signed_in
    async def agent_config(self, request: Request, user: Principal) -> Response:
        """``POST /machines/{id}/agent-config``: set the interval and collectors the
        machine's agent runs (as ``PUT /api/v1/machines/{id}/agent-config``), or, with
        ``action=default``, store the server's current defaults (``[collect]``)."""
        machine = await self._mine(request, user)
        if machine is None:
            return not_found(request, user, "machine")
        fields = await form_lists(request, max_fields=MAX_COLLECTORS + 8)
        machines = self._machines(request)
        current = await machines.agent_config(machine.id, user)
        interval_text = (fields.get("interval") or [""])[0].strip()
        chosen = fields.get("collectors", [])
        try:
            if (fields.get("action") or [""])[0] == "default":
                collect = request.app.state.full_settings.collect
                interval, collectors = collect.interval, tuple(collect.collectors)
                saved = "agent-default"
            else:
                known = _known_collectors(request, current)
                interval = _interval(interval_text)
                collectors = _collectors(chosen, known)
                saved = "agent-config"
            await machines.set_agent_config(
                user,
                machine.id,
                interval=interval,
                collectors=collectors,
                labels=current.config.labels if current.stored else (),
                client=client_of(request),
            )
        except ValidationError as error:
            bad = error.errors[0].path.split("[")[0] if error.errors else ""
            config_form = {
                "problem": _problem(error),
                "bad": bad,
                "interval": interval_text,
                "collectors": chosen,
            }
            return await self._settings_page(request, user, machine, config_form=config_form)
        return redirect(request, f"/machines/{machine.id}/settings?saved={saved}")

    @signed_in
    async def settings(self, request: Request, user: Principal) -> Response:
        """``GET /machines/{id}/settings``: labels, keys and deletion."""
        machine = await self._mine(request, user)
        if machine is None:
            return not_found(request, user, "machine")
        return await self._settings_page(request, user, machine)

    async def _settings_page(
        self,
        request: Request,
        user: Principal,
        machine: Machine,
        problem: str = "",
        form: dict[str, str] | None = None,
        *,
        new_key: str | None = None,
        config_form: Mapping[str, object] | None = None,
    ) -> Response:
        machines = self._machines(request)
        keys = await machines.keys(user, machine.id)
        effective = await machines.agent_config(machine.id, user)
        now = hub_of(request).clock()
        labels = (form or {}).get("labels", labels_text(machine.labels))
        config = effective.config
        collect = request.app.state.full_settings.collect
        chosen = (config_form or {}).get("collectors", list(config.collectors))
        context = {
            "agent": {
                "stored": effective.stored,
                "version": config.version if effective.stored else 0,
                "updated_at": config.updated_at if effective.stored else None,
                "interval": (config_form or {}).get(
                    "interval", f"{config.interval.total_seconds():g}"
                ),
                "collectors": _known_collectors(request, effective),
                "chosen": chosen,
                "problem": (config_form or {}).get("problem", ""),
                "bad": (config_form or {}).get("bad", ""),
                "default_interval": collect.interval.total_seconds(),
                "default_collectors": collect.collectors,
            },
            "user": user,
            "machine": machine,
            "keys": [{"key": k, "active": k.is_active(now)} for k in keys],
            "labels": labels,
            "problem": problem,
            "saved": request.query_params.get("saved"),
            "new_key": new_key,
        }
        status = 400 if problem or config_form else 201 if new_key else 200
        return render(request, "machine_settings.html", context, status=status)

    @signed_in
    async def rotate(self, request: Request, user: Principal) -> Response:
        """``POST /machines/{id}/keys/rotate``: a new key, shown once; the old ones
        keep working for ``server.key_rotation_grace``, as with the API's default."""
        machine = await self._mine(request, user)
        if machine is None:
            return not_found(request, user, "machine")
        issued = await self._machines(request).rotate(user, machine.id, client=client_of(request))
        return await self._settings_page(request, user, machine, new_key=issued.secret)

    @signed_in
    async def revoke(self, request: Request, user: Principal) -> Response:
        """``POST /machines/{id}/keys/{key_id}/revoke``: the key stops working now."""
        machine = await self._mine(request, user)
        if machine is None:
            return not_found(request, user, "machine")
        key_id = request.path_params["key_id"]
        try:
            await self._machines(request).revoke(
                user, machine.id, key_id, client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, user, "API key")
        return redirect(request, f"/machines/{machine.id}/settings?saved=revoked")

    @signed_in
    async def delete_form(self, request: Request, user: Principal) -> Response:
        """``GET /machines/{id}/delete``: are you sure?"""
        machine = await self._mine(request, user)
        if machine is None:
            return not_found(request, user, "machine")
        return render(request, "machine_delete.html", {"user": user, "machine": machine})

    @signed_in
    async def delete(self, request: Request, user: Principal) -> Response:
        """``POST /machines/{id}/delete``: delete it with its keys and series."""
        machine = await self._mine(request, user)
        if machine is None:
            return not_found(request, user, "machine")
        await self._machines(request).delete(user, machine.id, client=client_of(request))
        return redirect(request, "/")


def _known_collectors(request: Request, effective: EffectiveConfig) -> list[str]:
    """The collectors the form offers: the server's, and any the stored configuration
    names that the server lacks (an agent may have plugins the server has not), so that
    saving the form keeps them."""
    names = set(hub_of(request).plugins.collectors())
    if effective.stored:
        names.update(effective.config.collectors)
    return sorted(names)


def _interval(text: str) -> timedelta:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise ValidationError([FieldError("interval", "must be a number of seconds")], "form")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValidationError([FieldError("interval", "is out of range")], "form") from None


def _collectors(chosen: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    unknown = [name for name in chosen if name not in known]
    if unknown:
        offered = ", ".join(known) or "none"
        errors = [
            FieldError("collectors", f"{name!r} is not a collector this server knows ({offered})")
            for name in unknown
        ]
        raise ValidationError(errors, "form")
    return tuple(dict.fromkeys(chosen))


def _new_page(
    request: Request,
    user: Principal,
    form: dict[str, str],
    problem: str = "",
    status: int = 200,
) -> Response:
    context = {"user": user, "form": form, "problem": problem}
    return render(request, "machine_new.html", context, status=status)


def _admins_only(request: Request, user: Principal) -> Response:
    context = {"user": user, "message": "Only an administrator claims agents."}
    return render(request, "refused.html", context, status=403)


def _claims(request: Request) -> Claims:
    state = request.app.state
    return Claims(hub_of(request), state.full_settings, throttle=state.registrations)


async def _agent_wheels(request: Request) -> tuple[Sequence[str], str | None]:
    """As the API's registration: the served wheels' URLs, or the package names and why."""
    base = request.app.state.settings.base_url
    try:
        wheels = await request.app.state.agent_dist.wheels()
    except DistError as error:
        return AGENT_PACKAGES, manual_install(error)
    return [f"{base}/agent/dist/{wheel.name}" for wheel in wheels], None
