"""The agentless pages: credential profiles, discovery profiles and their runs,
devices, and the monitors that poll them; one module each, and :mod:`.common` for what
they share.

Everything goes through the services the API's routes use
(:class:`~lunasentri_core.services.credentials.CredentialProfiles`,
:class:`~lunasentri_core.services.discovery.Discovery`,
:class:`~lunasentri_core.services.monitors.Devices` and
:class:`~lunasentri_core.services.monitors.Monitors`), with the same owner
scoping and checks: a mistake shows the form again with the service's message,
the field it names marked, and what was typed (a password never: it is
write-only, as in the API). Another user's record is "not found".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

from lunasentri_core.server.dashboard.agentless.credentials import CredentialPages
from lunasentri_core.server.dashboard.agentless.devices import DevicePages
from lunasentri_core.server.dashboard.agentless.discovery import DiscoveryPages
from lunasentri_core.server.dashboard.agentless.monitors import MonitorPages

if TYPE_CHECKING:
    from lunasentri_core.server.dashboard.pages import Pages


def agentless_routes(pages: Pages) -> list[BaseRoute]:
    return [
        *MonitorPages(pages).routes(),
        *DevicePages(pages).routes(),
        *DiscoveryPages(pages).routes(),
        *CredentialPages(pages).routes(),
    ]
