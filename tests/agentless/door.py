"""A stand-in remote collector: a host that lets in one account, and remembers callers."""

from __future__ import annotations

import threading
import time
from typing import ClassVar

from lunasentri_core import HostIdentity, Reading, RemoteAuthError, RemoteCredential, Target
from lunasentri_core.testing import make_plugin

USERNAME = "svc-monitor"
PASSWORD = "correct horse battery staple"
HANGING_HOST = "hang.invalid"
"""A host the door never answers for (identify sleeps past any test's timeout)."""


class Door:
    """Identifies a host when the credential is ``USERNAME``/``PASSWORD``.

    Nothing goes over the network: the host is only a name here.
    """

    name: ClassVar[str] = "door"
    settings_class: ClassVar[None] = None
    seen: ClassVar[list[RemoteCredential]] = []
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def collect(self, target: Target) -> list[Reading]:
        self._check(target)
        return [Reading("proc.count", 42)]

    def identify(self, target: Target) -> HostIdentity:
        if target.host == HANGING_HOST:
            time.sleep(30)
        self._check(target)
        return HostIdentity(hostname="WIN-DOOR", os="Windows Server 2019", os_version="10.0.17763")

    def _check(self, target: Target) -> None:
        credential = target.credential
        assert credential is not None
        with self._lock:
            self.seen.append(credential)
        if (credential.username, credential.password) != (USERNAME, PASSWORD):
            raise RemoteAuthError("the host refused the credential (HTTP 401)")


class Plain:
    """A collector that cannot identify hosts."""

    name: ClassVar[str] = "plain"
    settings_class: ClassVar[None] = None

    def collect(self, target: Target) -> list[Reading]:
        return [Reading("proc.count", 1)]


def door_plugins() -> dict[str, object]:
    return {"door": make_plugin("door", lunasentri_register_collectors=lambda: [Door, Plain])}
