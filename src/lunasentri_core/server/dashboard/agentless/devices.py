"""The devices: the list with what discovery learnt and their monitors, a device added by
address, delete."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from lunasentri_core.components import Principal
from lunasentri_core.errors import ConflictError, InUseError, NotFoundError, ValidationError
from lunasentri_core.model import Device, Monitor
from lunasentri_core.server.dashboard.access import Section, signed_in
from lunasentri_core.server.dashboard.agentless.common import (
    add_device,
    delete_page,
    device_name,
    found_or_none,
    in_use,
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
from lunasentri_core.services.discovery import Discovery
from lunasentri_core.services.monitors import Devices, Monitors, outcome


class DevicePages(Section):
    def routes(self) -> list[BaseRoute]:
        return [
            page_route("/agentless/devices", self.devices, "GET", "devices"),
            page_route("/agentless/devices", self.add, "POST", "device_add"),
            page_route(
                "/agentless/devices/{device_id}/delete",
                self.delete_form,
                "GET",
                "device_delete_form",
            ),
            page_route(
                "/agentless/devices/{device_id}/delete", self.delete, "POST", "device_delete"
            ),
        ]

    @signed_in
    async def devices(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/devices``: the devices, what discovery learnt, their monitors."""
        return await self._list(request, user, {}, saved=saved_of(request))

    async def _list(
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
        devices = sorted(await Devices(hub).all(user), key=device_name)
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
            **times(request),
        }
        return render(request, "agentless_devices.html", context, status=status)

    @signed_in
    async def add(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/devices``: a device by address, without discovery."""
        form = await form_fields(request)
        try:
            await add_device(request, user, form.get("address", "").strip(), field="address")
        except (BadForm, ValidationError, ConflictError) as error:
            status = 409 if isinstance(error, ConflictError) else 400
            return await self._list(
                request, user, form, problem=problem_of(error)[0], status=status
            )
        return redirect(request, "/agentless/devices?saved=added")

    @signed_in
    async def delete_form(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/devices/{id}/delete``: ask first."""
        devices = Devices(hub_of(request))
        device = await found_or_none(devices.get(user, request.path_params["device_id"]))
        if device is None:
            return not_found(request, user, "device")
        return _delete_page(request, user, device)

    @signed_in
    async def delete(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/devices/{id}/delete``: refused while monitors poll it."""
        devices = Devices(hub_of(request))
        try:
            device = await devices.get(user, request.path_params["device_id"])
            await devices.delete(user, device.id, client=client_of(request))
        except NotFoundError:
            return not_found(request, user, "device")
        except InUseError as error:
            return _delete_page(request, user, device, problem=in_use(error), status=409)
        return redirect(request, "/agentless/devices?saved=deleted")


def _delete_page(
    request: Request,
    user: Principal,
    device: Device,
    *,
    problem: str = "",
    status: int = 200,
) -> Response:
    return delete_page(
        request,
        user,
        what="device",
        name=device_name(device),
        action=f"/agentless/devices/{device.id}/delete",
        back="/agentless/devices",
        warning="A device that monitors poll cannot be deleted: delete its monitors first. "
        "A later discovery run that finds it adds it again.",
        problem=problem,
        status=status,
    )
