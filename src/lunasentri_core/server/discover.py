"""``lunasentri discover PROFILE``: run a discovery profile here, with a progress bar.

Like ``lunasentri users``, it works on the configured storage directly, with or
without a server running: the run is recorded there, so the API and the
dashboard of a server sharing the storage show it too. It runs the scan in this
process with only what a run needs (storage, the collector plugins, the secret
box for the credential): none of a server's background services (polling,
notifications, heartbeat) starts here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

import anyio
import click
from anyio.abc import TaskGroup

from lunasentri_core.components import Collector, Principal
from lunasentri_core.config import Settings
from lunasentri_core.errors import NotFoundError
from lunasentri_core.hub import open_storage
from lunasentri_core.model import Device, DiscoveryProfile, DiscoveryRun, Role, RunState, utcnow
from lunasentri_core.plugins import ComponentKind, PluginManager, create_plugin_manager
from lunasentri_core.server.commands import _friendly_errors, _Settings
from lunasentri_core.services.credentials import CredentialVault
from lunasentri_core.services.discovery import Discovery
from lunasentri_core.storage.protocols import StorageBackend

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

CONSOLE = Principal(kind="system", id="", role=Role.ADMIN, via="cli")
"""The operator at the console: sees every profile; audited as the system."""
POLL_SECONDS = 0.25


class ConsoleHub:
    """What a discovery run needs of a hub, and nothing more."""

    def __init__(self, settings: Settings, storage: StorageBackend, plugins: PluginManager):
        self.settings = settings
        self.storage = storage
        self.plugins = plugins
        self.clock = utcnow
        self.credentials = CredentialVault(cast("Sentri", self), ttl=settings.secrets.cache_ttl)
        self._background: TaskGroup | None = None
        self._collectors: dict[str, Collector] = {}

    @property
    def background(self) -> TaskGroup:
        assert self._background is not None, "run inside ConsoleHub.running()"
        return self._background

    @contextmanager
    def running(self, group: TaskGroup) -> Iterator[Sentri]:
        self._background = group
        try:
            yield cast("Sentri", self)
        finally:
            self._background = None

    async def run_sync(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await anyio.to_thread.run_sync(lambda: func(*args, **kwargs))

    def collector(self, name: str) -> Collector:
        if name not in self._collectors:
            self._collectors[name] = self.plugins.component(ComponentKind.COLLECTOR, name).create()
        return self._collectors[name]


@click.command()
@click.argument("profile")
@click.option("--owner", help="The username owning PROFILE, when several users have one so named.")
@click.option(
    "--confirm-large",
    is_flag=True,
    help="Scan even more than 4096 hosts (larger than a /20).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run and its devices as JSON.")
@click.pass_obj
@_friendly_errors
def discover(
    obj: _Settings, profile: str, owner: str | None, confirm_large: bool, as_json: bool
) -> None:
    """Run discovery profile PROFILE (a name or an id) and list the devices it finds.

    Shows a progress bar while hosts are scanned; exits with status 1 if the run
    fails.
    """
    settings = obj.settings()
    plugins = create_plugin_manager(settings)
    storage = open_storage(settings, plugins)
    try:
        hub = ConsoleHub(settings, storage, plugins)
        chosen = _find(storage, profile, owner)
        run, devices = anyio.run(_run, hub, chosen, confirm_large, not as_json)
    finally:
        storage.close()
    if as_json:
        click.echo(json.dumps(_json(run, devices), indent=2))
    else:
        _print(run, devices)
    if run.state is not RunState.DONE:
        raise click.ClickException(f"the run failed: {run.error}")


def _find(storage: StorageBackend, text: str, owner: str | None) -> DiscoveryProfile:
    state = storage.state
    owner_id = None
    if owner is not None:
        user = state.find_user(owner)
        if user is None:
            raise NotFoundError(f"no user named {owner!r}")
        owner_id = user.id
    matches = [p for p in state.list_discovery_profiles(owner_id) if text in (p.id, p.name)]
    if not matches:
        raise NotFoundError(f"no discovery profile named {text!r}")
    if len(matches) > 1:
        raise click.ClickException(
            f"{len(matches)} users have a discovery profile named {text!r}: "
            "say whose with --owner USERNAME, or give its id"
        )
    return matches[0]


async def _run(
    console: ConsoleHub, profile: DiscoveryProfile, confirm_large: bool, show: bool
) -> tuple[DiscoveryRun, list[Device]]:
    async with anyio.create_task_group() as group:
        with console.running(group) as hub:
            service = Discovery(hub)
            run = await service.start(CONSOLE, profile.id, confirm_large=confirm_large)
            run = await _follow(service, run, show)
            devices = await service.found(CONSOLE, run)
    return run, devices


async def _follow(service: Discovery, run: DiscoveryRun, show: bool) -> DiscoveryRun:
    label = f"{run.total} host(s)"
    # With --json the bar goes nowhere: standard output is for the JSON.
    sink = None if show else io.StringIO()
    with click.progressbar(length=max(run.total, 1), label=label, file=sink, show_pos=True) as bar:
        shown = 0
        while run.state is RunState.RUNNING:
            await anyio.sleep(POLL_SECONDS)
            run = await service.get_run(CONSOLE, run.id)
            bar.length = max(run.total, 1)
            bar.update(run.scanned - shown)
            shown = run.scanned
    return run


def _print(run: DiscoveryRun, devices: list[Device]) -> None:
    click.echo(
        f"run {run.id}: {run.state.value}; scanned {run.scanned} of {run.total}, "
        f"found {run.found}, errors {run.errors}"
    )
    if not devices:
        return
    headers = ("address", "hostname", "os", "open ports", "credential")
    rows = [
        (
            d.address,
            d.hostname or "-",
            d.os or "-",
            ",".join(map(str, d.open_ports)),
            _credential(d),
        )
        for d in sorted(devices, key=lambda d: d.address)
    ]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for cells in [headers, tuple("-" * w for w in widths), *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())


def _credential(device: Device) -> str:
    if device.credential_ok is None:
        return "not tried"
    return "ok" if device.credential_ok else f"failed ({device.credential_error})"


def _json(run: DiscoveryRun, devices: list[Device]) -> dict[str, Any]:
    from lunasentri_core.server.routes.discovery import device_json, run_json

    return {**run_json(run), "devices": [device_json(d) for d in devices]}
