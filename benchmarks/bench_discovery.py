"""Benchmark: a discovery run over a /24 with 50 Windows hosts, on loopback addresses.

50 WS-Management test servers listen on port 5985 of addresses spread over
127.73.1.0/24; the other 204 addresses of the block answer nothing there (on
loopback a connection to them is refused at once: a real network's silent
addresses cost the per-host timeout instead, see docs/benchmarks.md). A hub on
SQLite runs a discovery profile with the default ports (135, 5985, 5986),
concurrency (256) and timeout (1 s), and a credential: each of the 50 hosts is
identified over WS-Management with the real pywinrm client, by the wmi plugin
when it is installed (an Identify and two one-row WQL queries), else by a
stand-in here that sends the Identify only, and becomes a device.

The run's wall time (start to the recorded end) is set against the 10 s target
and against a limit measured in the same run: a bare anyio connect scan of the
same 762 host-ports at the same concurrency, with no storage and no
identification, the least any such scan must do.

    python benchmarks/bench_discovery.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import _common as c
import anyio
from winrm.exceptions import InvalidCredentialsError
from winrm.protocol import Protocol

from lunasentri_core import HostIdentity, Reading, RemoteAuthError, Sentri, Settings, Target
from lunasentri_core.components import Principal
from lunasentri_core.model import DEFAULT_DISCOVERY_PORTS, Role, RunState, User
from lunasentri_core.services import scan
from lunasentri_core.services.credentials import CredentialProfiles, ProfileFields
from lunasentri_core.services.discovery import Discovery
from lunasentri_core.testing import WsmanServer, make_plugin

TARGET = 10.0
"""Seconds a /24 with 50 live hosts may take, with the default concurrency."""
BLOCK = "127.73.1.0/24"
LIVE = [f"127.73.1.{n}" for n in range(3, 254, 5)][:50]
IDENTIFY = (
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
    'xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd">'
    "<s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>"
)
_VERSION = re.compile(r"OS: ([0-9.]+)")


class Identify:
    """Identifies a host with one WS-Management Identify through pywinrm."""

    name: ClassVar[str] = "bench-identify"
    settings_class: ClassVar[None] = None

    def collect(self, target: Target) -> list[Reading]:
        return []

    def identify(self, target: Target) -> HostIdentity:
        credential = target.credential
        assert credential is not None
        assert target.host is not None
        protocol = Protocol(
            credential.endpoint(target.host),
            transport="basic",
            username=credential.account,
            password=credential.password,
            read_timeout_sec=10,
            operation_timeout_sec=5,
        )
        try:
            answer = protocol.send_message(IDENTIFY).decode()
        except InvalidCredentialsError as error:
            raise RemoteAuthError(str(error)) from None
        version = _VERSION.search(answer)
        return HostIdentity(os_version=version.group(1) if version else None)


async def bare_scan(addresses: list[str]) -> float:
    """The limit: connect to every host-port at the default concurrency, nothing else."""

    async def ignore(result: scan.HostResult) -> None:
        pass

    started = time.perf_counter()
    await scan.scan(
        addresses, DEFAULT_DISCOVERY_PORTS, concurrency=256, timeout=1.0, on_host=ignore
    )
    return time.perf_counter() - started


async def one_run(data_dir: Path) -> tuple[float, int, int, str]:
    plugins = {"bench": make_plugin("bench", lunasentri_register_collectors=lambda: [Identify])}
    async with Sentri(Settings.load(environ={}, data_dir=data_dir), plugins=plugins) as hub:
        state = hub.storage.state
        user = await hub.run_sync(state.add_user, User(id="ops", username="ops"), "x")
        actor = Principal(kind="user", id=user.id, role=Role.USER)
        fields = ProfileFields(name="lab", transport="basic", username="vagrant", https=False)
        creds = await CredentialProfiles(hub).create(actor, fields, "vagrant")
        service = Discovery(hub)
        # The real wmi plugin when installed (Identify and two WQL queries a host).
        collector = "wmi" if "wmi" in hub.plugins.collectors() else Identify.name
        profile = await service.create(
            actor, name="lab", targets=[BLOCK], credential_profile_id=creds.id, collector=collector
        )
        started = time.perf_counter()
        run = await service.start(actor, profile.id)
        while run.state is RunState.RUNNING:
            await anyio.sleep(0.01)
            run = await service.get_run(actor, run.id)
        elapsed = time.perf_counter() - started
        devices = await service.found(actor, run)
        if run.state is not RunState.DONE or run.errors:
            raise SystemExit(f"the run ended {run.state.value}: {run.error}, {run.errors} errors")
        identified = sum(1 for d in devices if d.credential_ok)
        return elapsed, len(devices), identified, collector


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for line in c.environment():
        print(line)
    addresses = list(scan.parse_target(BLOCK).addresses())  # type: ignore[union-attr]
    print(
        f"discovery of {BLOCK} ({len(addresses)} hosts x {len(DEFAULT_DISCOVERY_PORTS)} ports), "
        f"{len(LIVE)} WS-Management hosts, concurrency 256 (best of {args.repeat})"
    )
    servers = [WsmanServer({"vagrant": "vagrant"}, host=a, port=5985) for a in LIVE]
    for server in servers:
        server.start()
    try:
        best, best_bare, found, identified = float("inf"), float("inf"), 0, 0
        collector = "?"
        for attempt in range(args.repeat):
            best_bare = min(best_bare, anyio.run(bare_scan, addresses))
            with tempfile.TemporaryDirectory() as tmp:
                elapsed, found, identified, collector = anyio.run(
                    one_run, Path(tmp) / f"run{attempt}"
                )
            best = min(best, elapsed)
    finally:
        for server in servers:
            server.stop()
    if (found, identified) != (len(LIVE), len(LIVE)):
        raise SystemExit(f"{found} devices, {identified} identified: {len(LIVE)} expected")
    print(
        f"run {best:6.2f} s ({found} devices, {identified} identified by {collector}); "
        f"bare connect scan {best_bare:6.2f} s; ratio {best / best_bare:5.1f}; "
        f"target < {TARGET:g} s: {c.verdict(best < TARGET)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
