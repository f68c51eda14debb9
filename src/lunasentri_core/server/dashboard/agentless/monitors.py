"""The monitors: the list with how their polling goes (the agentless home page), a new
monitor, one monitor's page, enable or disable, poll now, delete."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from lunasentri_core.components import Principal
from lunasentri_core.errors import ConflictError, NotFoundError, ValidationError
from lunasentri_core.model import Device, Monitor
from lunasentri_core.server.dashboard.access import Section, signed_in
from lunasentri_core.server.dashboard.agentless.common import (
    FieldProblem,
    add_device,
    choices,
    delete_page,
    device_name,
    found_or_none,
    interval_of,
    options_of,
    problem_of,
    saved_of,
    times,
)
from lunasentri_core.server.dashboard.manage import BadForm
from lunasentri_core.server.dashboard.pages import (
    client_of,
    form_fields,
    hub_of,
    not_found,
    page_route,
    redirect,
    render,
)
from lunasentri_core.services.credentials import CredentialProfiles, collector_names
from lunasentri_core.services.monitors import Devices, MonitorChanges, Monitors, outcome

NEW_MONITOR = {"interval": "60", "enabled": "true", "options": "{}", "collector": "wmi"}


class MonitorPages(Section):
    def routes(self) -> list[BaseRoute]:
        return [
            page_route("/agentless", self.monitors, "GET", "agentless"),
            page_route("/agentless/monitors/new", self.new, "GET", "monitor_new_form"),
            page_route("/agentless/monitors/new", self.create, "POST", "monitor_create"),
            page_route("/agentless/monitors/{monitor_id}", self.edit, "GET", "monitor_edit"),
            page_route("/agentless/monitors/{monitor_id}", self.update, "POST", "monitor_update"),
            page_route(
                "/agentless/monitors/{monitor_id}/enabled", self.enable, "POST", "monitor_enable"
            ),
            page_route("/agentless/monitors/{monitor_id}/poll", self.poll, "POST", "monitor_poll"),
            page_route(
                "/agentless/monitors/{monitor_id}/delete",
                self.delete_form,
                "GET",
                "monitor_delete_form",
            ),
            page_route(
                "/agentless/monitors/{monitor_id}/delete", self.delete, "POST", "monitor_delete"
            ),
        ]

    @signed_in
    async def monitors(self, request: Request, user: Principal) -> Response:
        """``GET /agentless``: the monitors and how their polling goes."""
        return await self._list(request, user, saved=saved_of(request))

    async def _list(
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
            monitors, key=lambda m: (device_name(devices.get(m.device_id)), m.collector, m.id)
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
            **times(request),
        }
        return render(request, "agentless_monitors.html", context, status=status)

    @signed_in
    async def new(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/monitors/new[?device=<id>]``: the form for a new monitor."""
        form = dict(NEW_MONITOR)
        device_id = request.query_params.get("device", "")
        if device_id:
            form["device_id"] = device_id
        return await self._new_form(request, user, form)

    async def _new_form(
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
        devices = sorted(await Devices(hub).all(user), key=device_name)
        profiles = await CredentialProfiles(hub).all(user)
        context = {
            "user": user,
            "sub": "monitors",
            "form": form,
            "problem": problem,
            "bad": bad,
            "device_choices": [(d.id, device_name(d)) for d in devices],
            "credential_choices": choices(profiles),
            "collector_choices": [(name, name) for name in collector_names(hub)],
            "profiles": profiles,
        }
        return render(request, "agentless_monitor_new.html", context, status=status)

    @signed_in
    async def create(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/monitors/new``: a monitor of a device (or of a new address)."""
        form = await form_fields(request)
        hub = hub_of(request)
        try:
            interval = interval_of(form)
            options = options_of(form)
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
                    device_id = (await add_device(request, user, address, field="address")).id
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
            return await self._new_form(request, user, form, problem=problem, bad=bad, status=400)
        except NotFoundError as error:
            problem, bad = str(error), "device_id"
            if "credential" in problem.lower():
                bad = "credential_profile_id"
            return await self._new_form(request, user, form, problem=problem, bad=bad, status=400)
        except ConflictError as error:
            return await self._new_form(
                request, user, form, problem=str(error), bad="collector", status=409
            )
        return redirect(request, f"/agentless?saved=created#monitor-{monitor.id}")

    async def _monitor(self, request: Request, user: Principal) -> Monitor | None:
        monitors = Monitors(hub_of(request))
        return await found_or_none(monitors.get(user, request.path_params["monitor_id"]))

    @signed_in
    async def edit(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/monitors/{id}``: its last poll outcome and its settings."""
        monitor = await self._monitor(request, user)
        if monitor is None:
            return not_found(request, user, "monitor")
        return await self._page(request, user, monitor, _form_of(monitor), saved=saved_of(request))

    async def _page(
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
        device = await found_or_none(Devices(hub).get(user, monitor.device_id))
        context = {
            "user": user,
            "sub": "monitors",
            "monitor": monitor,
            "state": outcome(monitor),
            "device": device,
            "form": form,
            "credential_choices": choices(await CredentialProfiles(hub).all(user)),
            "saved": saved,
            "problem": problem,
            "bad": bad,
            **times(request),
        }
        return render(request, "agentless_monitor.html", context, status=status)

    @signed_in
    async def update(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/monitors/{id}``: its credential profile, interval, options."""
        monitor = await self._monitor(request, user)
        if monitor is None:
            return not_found(request, user, "monitor")
        form = await form_fields(request)
        try:
            changes = MonitorChanges(
                credential_profile_id=form.get("credential_profile_id", "").strip() or None,
                interval=interval_of(form),
                options=options_of(form),
            )
            await Monitors(hub_of(request)).update(
                user, monitor.id, changes, client=client_of(request)
            )
        except (BadForm, ValidationError) as error:
            problem, bad = problem_of(error)
            return await self._page(
                request, user, monitor, form, problem=problem, bad=bad, status=400
            )
        except NotFoundError as error:
            return await self._page(
                request,
                user,
                monitor,
                form,
                problem=str(error),
                bad="credential_profile_id",
                status=400,
            )
        return redirect(request, f"/agentless/monitors/{monitor.id}?saved=updated")

    @signed_in
    async def enable(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/monitors/{id}/enabled``: ``enabled=true`` or ``false``."""
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

    @signed_in
    async def poll(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/monitors/{id}/poll``: poll it now and show how it went."""
        try:
            monitor, polled = await Monitors(hub_of(request)).poll_now(
                user, request.path_params["monitor_id"], client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, user, "monitor")
        shown = {"monitor": monitor, "ok": polled.error is None, "error": polled.error}
        return await self._list(request, user, polled=shown)

    @signed_in
    async def delete_form(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/monitors/{id}/delete``: ask first."""
        monitor = await self._monitor(request, user)
        if monitor is None:
            return not_found(request, user, "monitor")
        return await self._delete_page(request, user, monitor)

    async def _delete_page(self, request: Request, user: Principal, monitor: Monitor) -> Response:
        hub = hub_of(request)
        others = [
            m for m in await Monitors(hub).all(user, device_id=monitor.device_id) if m != monitor
        ]
        device: Device | None = await found_or_none(Devices(hub).get(user, monitor.device_id))
        name = f"{monitor.collector} monitor of {device_name(device)}"
        warning = (
            "Its metrics stay with the device's machine, which its other monitors write to."
            if others
            else "It is the device's last monitor: the device's machine goes with it, "
            "with its metrics, alert events and status history. The device stays."
        )
        return delete_page(
            request,
            user,
            what="monitor",
            name=name,
            action=f"/agentless/monitors/{monitor.id}/delete",
            back=f"/agentless/monitors/{monitor.id}",
            warning=warning,
        )

    @signed_in
    async def delete(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/monitors/{id}/delete``: always allowed."""
        try:
            await Monitors(hub_of(request)).delete(
                user, request.path_params["monitor_id"], client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, user, "monitor")
        return redirect(request, "/agentless?saved=deleted")


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


def _form_of(monitor: Monitor) -> dict[str, str]:
    return {
        "credential_profile_id": monitor.credential_profile_id,
        "interval": f"{monitor.interval.total_seconds():g}",
        "options": json.dumps(dict(monitor.options), indent=1, sort_keys=True),
    }
