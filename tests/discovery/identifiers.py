"""Stand-in collectors that identify hosts, for discovery tests (no real Windows)."""

from __future__ import annotations

import threading
from typing import ClassVar

from lunasentri_core import HostIdentity, Reading, RemoteAuthError, Target
from lunasentri_core.testing import make_plugin

USERNAME = "svc-discovery"
PASSWORD = "a discovery password 7"


class Sesame:
    """Identifies any host (``WIN-<last octet>``) for USERNAME/PASSWORD; refuses others.

    ``gate`` (when set by a test) holds every identification until it is set, so a
    run stays under way as long as a test needs.
    """

    name: ClassVar[str] = "sesame"
    settings_class: ClassVar[None] = None
    gate: ClassVar[threading.Event | None] = None
    identified: ClassVar[list[str]] = []

    def collect(self, target: Target) -> list[Reading]:
        return [Reading("proc.count", 1)]

    def identify(self, target: Target) -> HostIdentity:
        gate = self.gate
        if gate is not None:
            gate.wait(60)
        credential = target.credential
        assert credential is not None
        assert target.host is not None
        self.identified.append(target.host)
        if (credential.username, credential.password) != (USERNAME, PASSWORD):
            raise RemoteAuthError("the host refused the credential (HTTP 401)")
        return HostIdentity(
            hostname=f"WIN-{target.host.rsplit('.', 1)[-1]}",
            os="Microsoft Windows Server 2019 Datacenter",
            os_version="10.0.17763",
        )


class Counter:
    """A collector that cannot identify hosts."""

    name: ClassVar[str] = "counter"
    settings_class: ClassVar[None] = None

    def collect(self, target: Target) -> list[Reading]:
        return [Reading("proc.count", 1)]


def identifier_plugins() -> dict[str, object]:
    hooks = {"lunasentri_register_collectors": lambda: [Sesame, Counter]}
    return {"sesame": make_plugin("sesame", **hooks)}
