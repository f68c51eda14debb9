"""Helpers of the WMI plugin's tests."""

from __future__ import annotations

from collections.abc import Iterable

from lunasentri_core import Reading, RemoteCredential, Target, Transport
from lunasentri_core.testing import WsmanServer


def target_of(server: WsmanServer, password: str = "vagrant", machine_id: str = "win-1") -> Target:
    """A target that reaches ``server`` with Basic authentication over HTTP."""
    port = int(server.url.rsplit(":", 1)[1].split("/", 1)[0])
    credential = RemoteCredential(
        transport=Transport.BASIC, username="vagrant", password=password, https=False, port=port
    )
    return Target(machine_id=machine_id, host=server.host, credential=credential)


def by_series(readings: Iterable[Reading]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Readings as ``{(metric, labels): value}``."""
    return {(r.metric, r.labels): r.value for r in readings}


def values(readings: Iterable[Reading], metric: str, label: str | None = None) -> dict[str, float]:
    """``metric``'s values by the value of ``label`` (``""`` for the unlabelled one)."""
    found: dict[str, float] = {}
    for reading in readings:
        if reading.metric == metric:
            found[dict(reading.labels).get(label, "") if label else ""] = reading.value
    return found
