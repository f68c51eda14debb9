"""The agentless pages: credential profiles, discovery profiles and their runs,
devices, and the monitors that poll them.

Everything goes through the services the API's routes use
(:class:`~lunasentri_core.services.credentials.CredentialProfiles`,
:class:`~lunasentri_core.services.discovery.Discovery`,
:class:`~lunasentri_core.services.monitors.Devices` and
:class:`~lunasentri_core.services.monitors.Monitors`), with the same owner
scoping and checks: a mistake shows the form again with the service's message,
the field it names marked, and what was typed (a password never: it is
write-only, as in the API). Another user's record is "not found".

A discovery run's page follows its progress: the progress part asks for itself
again every second (htmx) while the run is under way, reading the stored run as
``GET /api/v1/discovery-runs/{id}`` does, so any server process sharing the
database shows it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from lunasentri_core.components import Principal
from lunasentri_core.errors import ConflictError, InUseError, NotFoundError, ValidationError
from lunasentri_core.model import (
    CredentialProfile,
    Device,
    DiscoveryProfile,
    DiscoveryRun,
    Monitor,
    RunState,
)
from lunasentri_core.remote import Transport
from lunasentri_core.server.dashboard.manage import BadForm
from lunasentri_core.server.dashboard.pages import (
    ago,
    client_of,
    form_fields,
    hub_of,
    not_found,
    page_route,
    redirect,
    render,
    to_login,
)
from lunasentri_core.server.routes.credentials import MAX_PASSWORD
from lunasentri_core.services.credentials import (
    CredentialProfiles,
    ProfileFields,
    collector_names,
    identifier_names,
)
from lunasentri_core.services.discovery import Discovery
from lunasentri_core.services.monitors import (
    Devices,
    MonitorChanges,
    Monitors,
    check_interval,
    check_options,
    outcome,
)

if TYPE_CHECKING:
    from lunasentri_core.server.dashboard.pages import Pages

MAX_ACCOUNT = 256
"""Characters of a user name or domain (as the API's schema allows)."""
TARGETS_FORM_LIMIT = 32 * 1024
"""Bytes a discovery profile's form may take (its targets: up to 256 entries)."""
PROGRESS_EVERY = 1
"""Seconds between two looks at a running discovery run's progress."""
RUNS = 10
"""A discovery profile's runs its page lists (newest first)."""
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
NEW_CREDENTIAL = {"transport": "ntlm", "https": "true", "verify_tls": "true"}
NEW_DISCOVERY = {
    "ports": "135, 5985, 5986",
    "concurrency": "256",
    "timeout": "1",
    "collector": "wmi",
}
NEW_MONITOR = {"interval": "60", "enabled": "true", "options": "{}", "collector": "wmi"}
_SPLIT = re.compile(r"[\s,]+")
_LINES = re.compile(r"[\r\n,]+")


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


def _saved(request: Request) -> str:
    saved = request.query_params.get("saved", "")
    return saved if saved in SAVED else ""


def _optional(form: Mapping[str, str], name: str) -> str | None:
    return form.get(name, "").strip() or None


def _number(form: Mapping[str, str], name: str, kind: Callable[[str], Any]) -> Any:
    text = form.get(name, "").strip()
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise FieldProblem(name, f"{text!r} is not {what}") from None


def _when(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "never"
    return f"{at.strftime('%Y-%m-%d %H:%M:%S')} UTC ({ago(at, now)})"


def agentless_routes(pages: Pages) -> list[BaseRoute]:
    page = AgentlessPage(pages)
    return [
        page_route("/agentless", page.monitors, "GET", "agentless"),
        page_route("/agentless/monitors/new", page.monitor_new, "GET", "monitor_new_form"),
        page_route("/agentless/monitors/new", page.monitor_create, "POST", "monitor_create"),
        page_route("/agentless/monitors/{monitor_id}", page.monitor_edit, "GET", "monitor_edit"),
        page_route(
            "/agentless/monitors/{monitor_id}", page.monitor_update, "POST", "monitor_update"
        ),
        page_route(
            "/agentless/monitors/{monitor_id}/enabled",
            page.monitor_enable,
            "POST",
            "monitor_enable",
        ),
        page_route(
            "/agentless/monitors/{monitor_id}/poll", page.monitor_poll, "POST", "monitor_poll"
        ),
        page_route(
            "/agentless/monitors/{monitor_id}/delete",
            page.monitor_delete_form,
            "GET",
            "monitor_delete_form",
        ),
        page_route(
            "/agentless/monitors/{monitor_id}/delete",
            page.monitor_delete,
            "POST",
            "monitor_delete",
        ),
        page_route("/agentless/devices", page.devices, "GET", "devices"),
        page_route("/agentless/devices", page.device_add, "POST", "device_add"),
        page_route(
            "/agentless/devices/{device_id}/delete",
            page.device_delete_form,
            "GET",
            "device_delete_form",
        ),
        page_route(
            "/agentless/devices/{device_id}/delete", page.device_delete, "POST", "device_delete"
        ),
        page_route("/agentless/discovery", page.discovery, "GET", "discovery"),
        page_route("/agentless/discovery", page.discovery_create, "POST", "discovery_create"),
        page_route(
            "/agentless/discovery/{profile_id}", page.discovery_edit, "GET", "discovery_edit"
        ),
        page_route(
            "/agentless/discovery/{profile_id}", page.discovery_update, "POST", "discovery_update"
        ),
        page_route(
            "/agentless/discovery/{profile_id}/run", page.discovery_run, "POST", "discovery_run"
        ),
        page_route(
            "/agentless/discovery/{profile_id}/delete",
            page.discovery_delete_form,
            "GET",
            "discovery_delete_form",
        ),
        page_route(
            "/agentless/discovery/{profile_id}/delete",
            page.discovery_delete,
            "POST",
            "discovery_delete",
        ),
        page_route("/agentless/runs/{run_id}", page.run, "GET", "discovery_run_page"),
        page_route(
            "/agentless/runs/{run_id}/progress", page.run_progress, "GET", "discovery_progress"
        ),
        page_route("/agentless/credentials", page.credentials, "GET", "credentials"),
        page_route("/agentless/credentials", page.credential_create, "POST", "credential_create"),
        page_route(
            "/agentless/credentials/{profile_id}",
            page.credential_edit,
            "GET",
            "credential_edit",
        ),
        page_route(
            "/agentless/credentials/{profile_id}",
            page.credential_update,
            "POST",
            "credential_update",
        ),
        page_route(
            "/agentless/credentials/{profile_id}/delete",
            page.credential_delete_form,
            "GET",
            "credential_delete_form",
        ),
        page_route(
            "/agentless/credentials/{profile_id}/delete",
            page.credential_delete,
            "POST",
            "credential_delete",
        ),
    ]


class AgentlessPage:
    def __init__(self, pages: Pages) -> None:
        self._pages = pages

    # ================================================================ monitors

    async def monitors(self, request: Request) -> Response:
        """``GET /agentless``: the monitors and how their polling goes."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        return await self._monitor_list(request, user, saved=_saved(request))

    async def _monitor_list(
        self,
        request: Request,
        user: Principal,
        *,
        saved: str = "",
        problem: str = "",
        polled: dict[str, Any] | None = None,
        status: int = 200,
    ) -> Response:
        hub = hub_of(request)
        monitors = await Monitors(hub).all(user)
        devices = {d.id: d for d in await Devices(hub).all(user)}
        profiles = {p.id: p for p in await CredentialProfiles(hub).all(user)}
        ordered = sorted(
            monitors, key=lambda m: (_device_name(devices.get(m.device_id)), m.collector, m.id)
        )
        rows = [
            {
                "monitor": m,
                "state": outcome(m),
                "device": devices.get(m.device_id),
                "profile": profiles.get(m.credential_profile_id),
            }
            for m in ordered
        ]
        context = {
            "user": user,
            "sub": "monitors",
            "rows": rows,
            "saved": saved,
            "problem": problem,
            "polled": polled,
            **_times(request),
        }
        return render(request, "agentless_monitors.html", context, status=status)

    async def monitor_new(self, request: Request) -> Response:
        """``GET /agentless/monitors/new[?device=<id>]``: the form for a new monitor."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        form = dict(NEW_MONITOR)
        device_id = request.query_params.get("device", "")
        if device_id:
            form["device_id"] = device_id
        return await self._monitor_form(request, user, form)

    async def _monitor_form(
        self,
        request: Request,
        user: Principal,
        form: Mapping[str, str],
        *,
        problem: str = "",
        bad: str = "",
        status: int = 200,
    ) -> Response:
        hub = hub_of(request)
        devices = sorted(await Devices(hub).all(user), key=_device_name)
        profiles = await CredentialProfiles(hub).all(user)
        context = {
            "user": user,
            "sub": "monitors",
            "form": form,
            "problem": problem,
            "bad": bad,
            "device_choices": [(d.id, _device_name(d)) for d in devices],
            "credential_choices": _choices(profiles),
            "collector_choices": [(name, name) for name in collector_names(hub)],
            "profiles": profiles,
        }
        return render(request, "agentless_monitor_new.html", context, status=status)

    async def monitor_create(self, request: Request) -> Response:
        """``POST /agentless/monitors/new``: a monitor of a device (or of a new address)."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        form = await form_fields(request)
        hub = hub_of(request)
        try:
            interval = _interval(form)
            options = _options(form)
            device_id = form.get("device_id", "").strip()
            address = form.get("address", "").strip()
            if bool(device_id) == bool(address):
                raise FieldProblem("device_id", "choose a device, or give a new address")
            profile_id = form.get("credential_profile_id", "").strip()
            if not profile_id:
                raise FieldProblem("credential_profile_id", "choose a credential profile")
            collector = form.get("collector", "").strip()
            # The address is checked before it is added, so a mistake adds nothing.
            await _check_monitor(request, user, profile_id, collector, new_device=bool(address))
            if address:
                try:
                    device_id = (await _add_device(request, user, address, field="address")).id
                except ConflictError as error:
                    raise FieldProblem("address", f"{error}; choose it from the devices") from None
            monitor = await Monitors(hub).create(
                user,
                device_id=device_id,
                credential_profile_id=profile_id,
                collector=collector,
                interval=interval,
                enabled=form.get("enabled") == "true",
                options=options,
                client=client_of(request),
            )
        except (BadForm, ValidationError) as error:
            problem, bad = problem_of(error)
            return await self._monitor_form(
                request, user, form, problem=problem, bad=bad, status=400
            )
        except NotFoundError as error:
            problem, bad = str(error), "device_id"
            if "credential" in problem.lower():
                bad = "credential_profile_id"
            return await self._monitor_form(
                request, user, form, problem=problem, bad=bad, status=400
            )
        except ConflictError as error:
            return await self._monitor_form(
                request, user, form, problem=str(error), bad="collector", status=409
            )
        return redirect(request, f"/agentless?saved=created#monitor-{monitor.id}")

    async def _monitor(self, request: Request, user: Principal) -> Monitor | None:
        try:
            return await Monitors(hub_of(request)).get(user, request.path_params["monitor_id"])
        except NotFoundError:
            return None

    async def monitor_edit(self, request: Request) -> Response:
        """``GET /agentless/monitors/{id}``: its last poll outcome and its settings."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        monitor = await self._monitor(request, user)
        if monitor is None:
            return not_found(request, user, "monitor")
        return await self._monitor_page(
            request, user, monitor, _monitor_form_of(monitor), saved=_saved(request)
        )

    async def _monitor_page(
        self,
        request: Request,
        user: Principal,
        monitor: Monitor,
        form: Mapping[str, str],
        *,
        saved: str = "",
        problem: str = "",
        bad: str = "",
        status: int = 200,
    ) -> Response:
        hub = hub_of(request)
        try:
            device: Device | None = await Devices(hub).get(user, monitor.device_id)
        except NotFoundError:
            device = None
        context = {
            "user": user,
            "sub": "monitors",
            "monitor": monitor,
            "state": outcome(monitor),
            "device": device,
            "form": form,
            "credential_choices": _choices(await CredentialProfiles(hub).all(user)),
            "saved": saved,
            "problem": problem,
            "bad": bad,
            **_times(request),
        }
        return render(request, "agentless_monitor.html", context, status=status)

    async def monitor_update(self, request: Request) -> Response:
        """``POST /agentless/monitors/{id}``: its credential profile, interval, options."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        monitor = await self._monitor(request, user)
        if monitor is None:
            return not_found(request, user, "monitor")
        form = await form_fields(request)
        try:
            changes = MonitorChanges(
                credential_profile_id=form.get("credential_profile_id", "").strip() or None,
                interval=_interval(form),
                options=_options(form),
            )
            await Monitors(hub_of(request)).update(
                user, monitor.id, changes, client=client_of(request)
            )
        except (BadForm, ValidationError) as error:
            problem, bad = problem_of(error)
            return await self._monitor_page(
                request, user, monitor, form, problem=problem, bad=bad, status=400
            )
        except NotFoundError as error:
            return await self._monitor_page(
                request,
                user,
                monitor,
                form,
                problem=str(error),
                bad="credential_profile_id",
                status=400,
            )
        return redirect(request, f"/agentless/monitors/{monitor.id}?saved=updated")

    async def monitor_enable(self, request: Request) -> Response:
        """``POST /agentless/monitors/{id}/enabled``: ``enabled=true`` or ``false``."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        wanted = (await form_fields(request)).get("enabled")
        if wanted not in ("true", "false"):
            context = {"user": user, "message": "Choose to enable or disable the monitor."}
            return render(request, "refused.html", context, status=400)
        try:
            monitor = await Monitors(hub_of(request)).update(
                user,
                request.path_params["monitor_id"],
                MonitorChanges(enabled=wanted == "true"),
                client=client_of(request),
            )
        except NotFoundError:
            return not_found(request, user, "monitor")
        saved = "enabled" if monitor.enabled else "disabled"
        return redirect(request, f"/agentless?saved={saved}#monitor-{monitor.id}")

    async def monitor_poll(self, request: Request) -> Response:
        """``POST /agentless/monitors/{id}/poll``: poll it now and show how it went."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        try:
            monitor, polled = await Monitors(hub_of(request)).poll_now(
                user, request.path_params["monitor_id"], client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, user, "monitor")
        shown = {"monitor": monitor, "ok": polled.error is None, "error": polled.error}
        return await self._monitor_list(request, user, polled=shown)

    async def monitor_delete_form(self, request: Request) -> Response:
        """``GET /agentless/monitors/{id}/delete``: ask first."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        monitor = await self._monitor(request, user)
        if monitor is None:
            return not_found(request, user, "monitor")
        return await self._monitor_delete_page(request, user, monitor)

    async def _monitor_delete_page(
        self, request: Request, user: Principal, monitor: Monitor
    ) -> Response:
        hub = hub_of(request)
        others = [
            m for m in await Monitors(hub).all(user, device_id=monitor.device_id) if m != monitor
        ]
        try:
            device: Device | None = await Devices(hub).get(user, monitor.device_id)
        except NotFoundError:
            device = None
        name = f"{monitor.collector} monitor of {_device_name(device)}"
        warning = (
            "Its metrics stay with the device's machine, which its other monitors write to."
            if others
            else "It is the device's last monitor: the device's machine goes with it, "
            "with its metrics, alert events and status history. The device stays."
        )
        return _delete_page(
            request,
            user,
            what="monitor",
            name=name,
            action=f"/agentless/monitors/{monitor.id}/delete",
            back=f"/agentless/monitors/{monitor.id}",
            warning=warning,
        )

    async def monitor_delete(self, request: Request) -> Response:
        """``POST /agentless/monitors/{id}/delete``: always allowed."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        try:
            await Monitors(hub_of(request)).delete(
                user, request.path_params["monitor_id"], client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, user, "monitor")
        return redirect(request, "/agentless?saved=deleted")

    # ================================================================ devices

    async def devices(self, request: Request) -> Response:
        """``GET /agentless/devices``: the devices, what discovery learnt, their monitors."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        return await self._device_list(request, user, {}, saved=_saved(request))

    async def _device_list(
        self,
        request: Request,
        user: Principal,
        form: Mapping[str, str],
        *,
        saved: str = "",
        problem: str = "",
        status: int = 200,
    ) -> Response:
        hub = hub_of(request)
        devices = sorted(await Devices(hub).all(user), key=_device_name)
        monitors: dict[str, list[Monitor]] = {}
        for monitor in await Monitors(hub).all(user):
            monitors.setdefault(monitor.device_id, []).append(monitor)
        discovery = {p.id: p.name for p in await Discovery(hub).all(user)}
        context = {
            "user": user,
            "sub": "devices",
            "devices": devices,
            "monitors": monitors,
            "discovery": discovery,
            "outcome": outcome,
            "form": form,
            "saved": saved,
            "problem": problem,
            "bad": "address" if problem else "",
            **_times(request),
        }
        return render(request, "agentless_devices.html", context, status=status)

    async def device_add(self, request: Request) -> Response:
        """``POST /agentless/devices``: a device by address, without discovery."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        form = await form_fields(request)
        try:
            await _add_device(request, user, form.get("address", "").strip(), field="address")
        except (BadForm, ValidationError, ConflictError) as error:
            status = 409 if isinstance(error, ConflictError) else 400
            return await self._device_list(
                request, user, form, problem=problem_of(error)[0], status=status
            )
        return redirect(request, "/agentless/devices?saved=added")

    async def device_delete_form(self, request: Request) -> Response:
        """``GET /agentless/devices/{id}/delete``: ask first."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        try:
            device = await Devices(hub_of(request)).get(user, request.path_params["device_id"])
        except NotFoundError:
            return not_found(request, user, "device")
        return _device_delete_page(request, user, device)

    async def device_delete(self, request: Request) -> Response:
        """``POST /agentless/devices/{id}/delete``: refused while monitors poll it."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        devices = Devices(hub_of(request))
        try:
            device = await devices.get(user, request.path_params["device_id"])
            await devices.delete(user, device.id, client=client_of(request))
        except NotFoundError:
            return not_found(request, user, "device")
        except InUseError as error:
            return _device_delete_page(request, user, device, problem=_in_use(error), status=409)
        return redirect(request, "/agentless/devices?saved=deleted")

    # ================================================================ discovery

    async def discovery(self, request: Request) -> Response:
        """``GET /agentless/discovery``: the discovery profiles and a form for a new one."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        return await self._discovery_list(request, user, dict(NEW_DISCOVERY), saved=_saved(request))

    async def _discovery_context(
        self, request: Request, user: Principal, form: Mapping[str, str]
    ) -> dict[str, Any]:
        hub = hub_of(request)
        identifying = identifier_names(hub)
        chosen = form.get("collector", "")
        profiles = await CredentialProfiles(hub).all(user)
        shown = identifying + ([chosen] if chosen and chosen not in identifying else [])
        return {
            "user": user,
            "sub": "discovery",
            "form": form,
            "names": {p.id: p.name for p in profiles},
            "credential_choices": _choices(profiles),
            "identifier_choices": [(name, name) for name in shown],
        }

    async def _discovery_list(
        self,
        request: Request,
        user: Principal,
        form: Mapping[str, str],
        *,
        saved: str = "",
        problem: str = "",
        bad: str = "",
        status: int = 200,
    ) -> Response:
        service = Discovery(hub_of(request))
        found = sorted(await service.all(user), key=lambda p: (p.name, p.id))
        latest = {}
        for profile in found:
            runs = await service.runs(user, profile.id, limit=1)
            latest[profile.id] = runs[0] if runs else None
        context = await self._discovery_context(request, user, form)
        context.update(
            discovery=found,
            latest=latest,
            saved=saved,
            problem=problem,
            bad=bad,
            **_times(request),
        )
        return render(request, "agentless_discovery.html", context, status=status)

    async def discovery_create(self, request: Request) -> Response:
        """``POST /agentless/discovery``: a new discovery profile."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        form = await form_fields(request, TARGETS_FORM_LIMIT)
        try:
            await Discovery(hub_of(request)).create(
                user, client=client_of(request), **_discovery_fields(form)
            )
        except (BadForm, ValidationError, ConflictError) as error:
            problem, bad = problem_of(error)
            status = 409 if isinstance(error, ConflictError) else 400
            bad = "name" if isinstance(error, ConflictError) else bad
            return await self._discovery_list(
                request, user, form, problem=problem, bad=bad, status=status
            )
        return redirect(request, "/agentless/discovery?saved=created")

    async def _discovery_profile(
        self, request: Request, user: Principal
    ) -> DiscoveryProfile | None:
        try:
            return await Discovery(hub_of(request)).get(user, request.path_params["profile_id"])
        except NotFoundError:
            return None

    async def discovery_edit(self, request: Request) -> Response:
        """``GET /agentless/discovery/{id}``: its runs, *Run*, and its settings."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        profile = await self._discovery_profile(request, user)
        if profile is None:
            return not_found(request, user, "discovery profile")
        return await self._discovery_page(
            request, user, profile, _discovery_form_of(profile), saved=_saved(request)
        )

    async def _discovery_page(
        self,
        request: Request,
        user: Principal,
        profile: DiscoveryProfile,
        form: Mapping[str, str],
        *,
        saved: str = "",
        problem: str = "",
        bad: str = "",
        run_problem: str = "",
        status: int = 200,
    ) -> Response:
        runs = await Discovery(hub_of(request)).runs(user, profile.id, limit=RUNS)
        context = await self._discovery_context(request, user, form)
        context.update(
            profile=profile,
            runs=runs,
            saved=saved,
            problem=problem,
            bad=bad,
            run_problem=run_problem,
            **_times(request),
        )
        return render(request, "agentless_discovery_edit.html", context, status=status)

    async def discovery_update(self, request: Request) -> Response:
        """``POST /agentless/discovery/{id}``: change its fields (a run under way goes on)."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        profile = await self._discovery_profile(request, user)
        if profile is None:
            return not_found(request, user, "discovery profile")
        form = await form_fields(request, TARGETS_FORM_LIMIT)
        try:
            await Discovery(hub_of(request)).update(
                user, profile.id, client=client_of(request), **_discovery_fields(form)
            )
        except NotFoundError:
            return not_found(request, user, "discovery profile")
        except (BadForm, ValidationError, ConflictError) as error:
            problem, bad = problem_of(error)
            status = 409 if isinstance(error, ConflictError) else 400
            bad = "name" if isinstance(error, ConflictError) else bad
            return await self._discovery_page(
                request, user, profile, form, problem=problem, bad=bad, status=status
            )
        return redirect(request, f"/agentless/discovery/{profile.id}?saved=updated")

    async def discovery_run(self, request: Request) -> Response:
        """``POST /agentless/discovery/{id}/run``: start a run and follow it."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        profile = await self._discovery_profile(request, user)
        if profile is None:
            return not_found(request, user, "discovery profile")
        form = await form_fields(request)
        try:
            run = await Discovery(hub_of(request)).start(
                user,
                profile.id,
                confirm_large=form.get("confirm_large") == "true",
                client=client_of(request),
            )
        except NotFoundError:
            return not_found(request, user, "discovery profile")
        except (ValidationError, ConflictError) as error:
            status = 409 if isinstance(error, ConflictError) else 400
            return await self._discovery_page(
                request,
                user,
                profile,
                _discovery_form_of(profile),
                run_problem=problem_of(error)[0],
                status=status,
            )
        return redirect(request, f"/agentless/runs/{run.id}")

    async def discovery_delete_form(self, request: Request) -> Response:
        """``GET /agentless/discovery/{id}/delete``: ask first."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        profile = await self._discovery_profile(request, user)
        if profile is None:
            return not_found(request, user, "discovery profile")
        return _delete_page(
            request,
            user,
            what="discovery profile",
            name=profile.name,
            action=f"/agentless/discovery/{profile.id}/delete",
            back=f"/agentless/discovery/{profile.id}",
            warning="Its runs are deleted with it; the devices it found stay.",
        )

    async def discovery_delete(self, request: Request) -> Response:
        """``POST /agentless/discovery/{id}/delete``: it and its runs."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        try:
            await Discovery(hub_of(request)).delete(
                user, request.path_params["profile_id"], client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, user, "discovery profile")
        return redirect(request, "/agentless/discovery?saved=deleted")

    # ---------------------------------------------------------------- a run

    async def run(self, request: Request) -> Response:
        """``GET /agentless/runs/{id}``: a run's progress and the devices it found."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        context = await self._run_context(request, user)
        if context is None:
            return not_found(request, user, "discovery run")
        return render(request, "agentless_run.html", context)

    async def run_progress(self, request: Request) -> Response:
        """``GET /agentless/runs/{id}/progress``: the progress part alone (htmx)."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        context = await self._run_context(request, user)
        if context is None:
            if request.headers.get("hx-request") == "true":
                # Deleted with its profile while the page asked: say so, and stop asking
                # (htmx swaps in no error answer, so it would go on asking every second).
                return render(request, "agentless_run_gone.html", {"user": user})
            return not_found(request, user, "discovery run")
        return render(request, "agentless_run_progress.html", context)

    async def _run_context(self, request: Request, user: Principal) -> dict[str, Any] | None:
        hub = hub_of(request)
        service = Discovery(hub)
        try:
            run = await service.get_run(user, request.path_params["run_id"])
        except NotFoundError:
            return None
        try:
            profile: DiscoveryProfile | None = await service.get(user, run.profile_id)
        except NotFoundError:
            profile = None
        devices = sorted(await service.found(user, run), key=_device_name)
        return {
            "user": user,
            "sub": "discovery",
            "run": run,
            "running": run.state is RunState.RUNNING,
            "percent": _percent(run),
            "profile": profile,
            "devices": devices,
            "every": PROGRESS_EVERY,
            **_times(request),
        }

    # ================================================================ credentials

    async def credentials(self, request: Request) -> Response:
        """``GET /agentless/credentials``: the credential profiles and a form for a new one."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        return await self._credential_list(
            request, user, dict(NEW_CREDENTIAL), saved=_saved(request)
        )

    async def _credential_list(
        self,
        request: Request,
        user: Principal,
        form: Mapping[str, str],
        *,
        saved: str = "",
        problem: str = "",
        bad: str = "",
        status: int = 200,
    ) -> Response:
        found = _by_name(await CredentialProfiles(hub_of(request)).all(user))
        context = {
            "user": user,
            "sub": "credentials",
            "credentials": found,
            "form": _without_password(form),
            "transport_choices": [(t.value, t.value) for t in Transport],
            "saved": saved,
            "problem": problem,
            "bad": bad,
        }
        return render(request, "agentless_credentials.html", context, status=status)

    async def credential_create(self, request: Request) -> Response:
        """``POST /agentless/credentials``: a new profile; its password stored encrypted."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        form = await form_fields(request)
        try:
            await CredentialProfiles(hub_of(request)).create(
                user,
                _credential_fields(form),
                form.get("password") or None,
                client=client_of(request),
            )
        except (BadForm, ValidationError, ConflictError) as error:
            problem, bad = problem_of(error)
            status = 409 if isinstance(error, ConflictError) else 400
            bad = "name" if isinstance(error, ConflictError) else bad
            return await self._credential_list(
                request, user, form, problem=problem, bad=bad, status=status
            )
        return redirect(request, "/agentless/credentials?saved=created")

    async def _credential(self, request: Request, user: Principal) -> CredentialProfile | None:
        try:
            return await CredentialProfiles(hub_of(request)).get(
                user, request.path_params["profile_id"]
            )
        except NotFoundError:
            return None

    async def credential_edit(self, request: Request) -> Response:
        """``GET /agentless/credentials/{id}``: its form (the password is never shown)."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        profile = await self._credential(request, user)
        if profile is None:
            return not_found(request, user, "credential profile")
        form = _credential_form_of(profile)
        return _credential_page(request, user, profile, form, saved=_saved(request))

    async def credential_update(self, request: Request) -> Response:
        """``POST /agentless/credentials/{id}``: an empty password keeps the stored one."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        profile = await self._credential(request, user)
        if profile is None:
            return not_found(request, user, "credential profile")
        form = await form_fields(request)
        clear = form.get("clear_password") == "true"
        password = None if clear else form.get("password") or None
        try:
            fields = _credential_fields(form)
            changes = {
                name: getattr(fields, name)
                for name in (
                    "name",
                    "transport",
                    "username",
                    "domain",
                    "https",
                    "port",
                    "verify_tls",
                    "ca_path",
                    "cert_path",
                    "key_path",
                )
            }
            await CredentialProfiles(hub_of(request)).update(
                user,
                profile.id,
                changes,
                password,
                clear_password=clear,
                client=client_of(request),
            )
        except NotFoundError:
            return not_found(request, user, "credential profile")
        except (BadForm, ValidationError, ConflictError) as error:
            problem, bad = problem_of(error)
            status = 409 if isinstance(error, ConflictError) else 400
            bad = "name" if isinstance(error, ConflictError) else bad
            return _credential_page(
                request, user, profile, form, problem=problem, bad=bad, status=status
            )
        return redirect(request, f"/agentless/credentials/{profile.id}?saved=updated")

    async def credential_delete_form(self, request: Request) -> Response:
        """``GET /agentless/credentials/{id}/delete``: ask first."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        profile = await self._credential(request, user)
        if profile is None:
            return not_found(request, user, "credential profile")
        return _credential_delete_page(request, user, profile)

    async def credential_delete(self, request: Request) -> Response:
        """``POST /agentless/credentials/{id}/delete``: refused while it is in use."""
        user = await self._pages.user(request)
        if user is None:
            return to_login(request)
        profile = await self._credential(request, user)
        if profile is None:
            return not_found(request, user, "credential profile")
        try:
            await CredentialProfiles(hub_of(request)).delete(
                user, profile.id, client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, user, "credential profile")
        except InUseError as error:
            return _credential_delete_page(
                request, user, profile, problem=_in_use(error), status=409
            )
        return redirect(request, "/agentless/credentials?saved=deleted")


# ==================================================================== helpers


def _times(request: Request) -> dict[str, Any]:
    now = hub_of(request).clock()
    return {"when": lambda at: _when(at, now), "ago": lambda at: ago(at, now)}


def _device_name(device: Device | None) -> str:
    if device is None:
        return "(device gone)"
    return f"{device.hostname} ({device.address})" if device.hostname else device.address


def _by_name(profiles: Sequence[CredentialProfile]) -> list[CredentialProfile]:
    return sorted(profiles, key=lambda p: (p.name, p.id))


def _choices(profiles: Sequence[CredentialProfile]) -> list[tuple[str, str]]:
    return [(p.id, p.name) for p in _by_name(profiles)]


def _percent(run: DiscoveryRun) -> int:
    if run.total <= 0:
        return 100 if run.state is not RunState.RUNNING else 0
    return min(100, run.scanned * 100 // run.total)


def _in_use(error: InUseError) -> str:
    counts = ", ".join(f"{len(ids)} {kind.replace('_', ' ')}" for kind, ids in error.users.items())
    return f"It is in use by {counts}: change or delete those first. ({error})"


async def _add_device(request: Request, user: Principal, address: str, *, field: str) -> Device:
    if not address:
        raise FieldProblem(field, "give a host name or an IP address")
    return await Devices(hub_of(request)).add(user, address, client=client_of(request))


async def _check_monitor(
    request: Request, user: Principal, profile_id: str, collector: str, *, new_device: bool
) -> None:
    """What a new monitor's create would refuse of its profile and collector, asked before
    a device is added for it (so a refused form adds nothing)."""
    hub = hub_of(request)
    installed = collector_names(hub)
    if collector not in installed:
        names = ", ".join(installed) or "none"
        raise FieldProblem("collector", f"no collector plugin {collector!r} (installed: {names})")
    try:
        profile = await CredentialProfiles(hub).get(user, profile_id)
    except NotFoundError:
        raise FieldProblem(
            "credential_profile_id", f"no credential profile with id {profile_id!r}"
        ) from None
    if new_device and profile.owner_id != user.id:
        raise FieldProblem("credential_profile_id", "must belong to the device's owner (you)")


def _interval(form: Mapping[str, str]) -> timedelta:
    return check_interval(_seconds(form, "interval"))


def _seconds(form: Mapping[str, str], name: str) -> timedelta:
    seconds = _number(form, name, float)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN, infinity
        raise FieldProblem(name, "must be a finite number of seconds")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise FieldProblem(name, f"{seconds:g} seconds is too long") from None


def _options(form: Mapping[str, str]) -> dict[str, Any]:
    text = form.get("options", "").strip() or "{}"
    try:
        options = json.loads(text)
    except ValueError as error:
        raise FieldProblem("options", f"not JSON: {error}") from None
    if not isinstance(options, dict):
        raise FieldProblem("options", 'must be a JSON object, such as {"key": "value"}')
    return check_options(options)


def _monitor_form_of(monitor: Monitor) -> dict[str, str]:
    return {
        "credential_profile_id": monitor.credential_profile_id,
        "interval": f"{monitor.interval.total_seconds():g}",
        "options": json.dumps(dict(monitor.options), indent=1, sort_keys=True),
    }


def _discovery_fields(form: Mapping[str, str]) -> dict[str, Any]:
    span = _seconds(form, "timeout")
    return {
        "name": form.get("name", "").strip(),
        "targets": [t.strip() for t in _LINES.split(form.get("targets", "")) if t.strip()],
        "credential_profile_id": _optional(form, "credential_profile_id"),
        "ports": _ports(form.get("ports", "")),
        "concurrency": _number(form, "concurrency", int),
        "timeout": span,
        "collector": form.get("collector", "").strip(),
    }


def _ports(text: str) -> list[int]:
    ports = []
    for item in filter(None, _SPLIT.split(text)):
        try:
            ports.append(int(item))
        except ValueError:
            raise FieldProblem("ports", f"{item!r} is not a port number") from None
    return ports


def _discovery_form_of(profile: DiscoveryProfile) -> dict[str, str]:
    return {
        "name": profile.name,
        "targets": "\n".join(profile.targets),
        "credential_profile_id": profile.credential_profile_id or "",
        "ports": ", ".join(str(p) for p in profile.ports),
        "concurrency": str(profile.concurrency),
        "timeout": f"{profile.timeout.total_seconds():g}",
        "collector": profile.collector,
    }


def _credential_fields(form: Mapping[str, str]) -> ProfileFields:
    transport = form.get("transport", "")
    if transport not in {t.value for t in Transport}:
        choices = ", ".join(t.value for t in Transport)
        raise FieldProblem("transport", f"choose one of {choices}")
    port = _number(form, "port", int) if form.get("port", "").strip() else None
    # What the API's schema limits and the service does not check.
    for name, most in (("username", MAX_ACCOUNT), ("domain", MAX_ACCOUNT)):
        if len(form.get(name, "").strip()) > most:
            raise FieldProblem(name, f"must be at most {most} characters")
    if len(form.get("password", "")) > MAX_PASSWORD:
        raise FieldProblem("password", f"must be at most {MAX_PASSWORD} characters")
    return ProfileFields(
        name=form.get("name", "").strip(),
        transport=Transport(transport),
        username=_optional(form, "username"),
        domain=_optional(form, "domain"),
        https=form.get("https") == "true",
        port=port,
        verify_tls=form.get("verify_tls") == "true",
        ca_path=_optional(form, "ca_path"),
        cert_path=_optional(form, "cert_path"),
        key_path=_optional(form, "key_path"),
    )


def _credential_form_of(profile: CredentialProfile) -> dict[str, str]:
    form = {
        "name": profile.name,
        "transport": profile.transport.value,
        "port": "" if profile.port is None else str(profile.port),
    }
    for name in ("username", "domain", "ca_path", "cert_path", "key_path"):
        form[name] = getattr(profile, name) or ""
    for name in ("https", "verify_tls"):
        if getattr(profile, name):
            form[name] = "true"
    return form


def _without_password(form: Mapping[str, str]) -> dict[str, str]:
    """Never a password back into a page: it would sit in the HTML and the history."""
    return {k: v for k, v in form.items() if k != "password"}


def _credential_page(
    request: Request,
    user: Principal,
    profile: CredentialProfile,
    form: Mapping[str, str],
    *,
    saved: str = "",
    problem: str = "",
    bad: str = "",
    status: int = 200,
) -> Response:
    context = {
        "user": user,
        "sub": "credentials",
        "profile": profile,
        "form": _without_password(form),
        "transport_choices": [(t.value, t.value) for t in Transport],
        "saved": saved,
        "problem": problem,
        "bad": bad,
    }
    return render(request, "agentless_credential.html", context, status=status)


def _credential_delete_page(
    request: Request,
    user: Principal,
    profile: CredentialProfile,
    *,
    problem: str = "",
    status: int = 200,
) -> Response:
    return _delete_page(
        request,
        user,
        what="credential profile",
        name=profile.name,
        action=f"/agentless/credentials/{profile.id}/delete",
        back=f"/agentless/credentials/{profile.id}",
        warning="Monitors and discovery profiles that use it must be changed or deleted first.",
        problem=problem,
        status=status,
    )


def _device_delete_page(
    request: Request,
    user: Principal,
    device: Device,
    *,
    problem: str = "",
    status: int = 200,
) -> Response:
    return _delete_page(
        request,
        user,
        what="device",
        name=_device_name(device),
        action=f"/agentless/devices/{device.id}/delete",
        back="/agentless/devices",
        warning="A device that monitors poll cannot be deleted: delete its monitors first. "
        "A later discovery run that finds it adds it again.",
        problem=problem,
        status=status,
    )


def _delete_page(
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
