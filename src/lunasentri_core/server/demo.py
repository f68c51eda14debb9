"""``lunasentri serve --demo``: this machine, registered and reporting, within seconds.

At start the demo registers the host as a machine of the first admin and runs
the push agent in-process against the server's own URL, so the data goes the
same way as any agent's: HTTP, API key, ingest. The agent is synchronous; it
runs in a worker thread and stops when the server's services do. Its key is
kept in its spool directory (``<data_dir>/demo-agent``), so a restart reuses
the machine.
"""

from __future__ import annotations

import functools
import logging
import socket

import anyio
import attrs
from anyio.abc import TaskGroup
from starlette.applications import Starlette

from lunasentri_core.components import Credentials, Principal
from lunasentri_core.config import Settings
from lunasentri_core.hub import Sentri
from lunasentri_core.model import Role
from lunasentri_core.server.first_admin import DemoPassword, password_works
from lunasentri_core.services.machines import Machines

log = logging.getLogger(__name__)

DEMO_DIR = "demo-agent"


async def start_demo(
    app: Starlette, services: TaskGroup, password: DemoPassword | None = None
) -> None:
    """Register this machine, run the agent for it, print how to look.

    :param password: The password the demo made for its admin (kept in its data
        directory): the banner shows it while it works. A password from the
        settings is never printed (it would end up in terminals' scrollback and
        service logs).
    """
    hub: Sentri = app.state.hub
    settings: Settings = app.state.full_settings
    admin = await hub.run_sync(hub.storage.state.find_user, settings.admin_username)
    if admin is None:
        log.warning("demo: no admin %r; set admin_password", settings.admin_username)
        return
    actor = Principal(kind="user", id=admin.id, role=Role.ADMIN)
    agent_settings = _agent_settings(settings)
    key = await _demo_key(hub, actor, agent_settings)
    services.start_soon(_run_agent, agent_settings, key)
    login, shown = await _login_line(hub, settings, password)
    print(banner(settings, login, shown), flush=True)


async def _login_line(
    hub: Sentri, settings: Settings, password: DemoPassword | None
) -> tuple[str, str]:
    """How to log in, and the password to show in the example (never a configured one)."""
    user = f"user {settings.admin_username!r}"
    if password is None:
        return (
            f"{user}, password: the one in LUNASENTRI_ADMIN_PASSWORD (admin_password)",
            "PASSWORD",
        )
    works = await hub.run_sync(
        password_works, hub.storage.state, settings.admin_username, password.value
    )
    if not works:
        return (
            f"{user}, password: the one set for it since the demo made it "
            f"('lunasentri users set-password {settings.admin_username}' sets another)",
            "PASSWORD",
        )
    made = "generated now" if password.new else "as before"
    return f"{user}, password {password.value!r} ({made}; kept in {password.path})", password.value


def _agent_settings(settings: Settings) -> Settings:
    spool = settings.data_dir / DEMO_DIR
    agent = attrs.evolve(
        settings.agent,
        server_url=settings.server.base_url,
        spool_dir=spool,
        api_key=None,
        # A demo should show each sample as soon as it is taken.
        send_interval=settings.agent.interval,
    )
    return attrs.evolve(settings, agent=agent)


async def _demo_key(hub: Sentri, actor: Principal, settings: Settings) -> str:
    from lunasentri_core.agent.identity import Identity

    identity = Identity(settings.agent.resolved_spool_dir(settings.data_dir))
    known = identity.api_key()
    if known is not None:
        credentials = Credentials(headers={"authorization": f"Bearer {known}"})
        if await hub.authenticate(credentials) is not None:
            return known
    machines = Machines(hub)
    name = socket.gethostname()
    existing = await hub.run_sync(hub.storage.state.find_machine, name, actor.id)
    if existing is None:
        registered = await machines.create(actor, name, hostname=name, labels=(("demo", "yes"),))
        secret = registered.issued.secret
    else:
        rotated = await machines.rotate(actor, existing.id)
        secret = rotated.secret
    identity.save_api_key(secret)
    return secret


async def _run_agent(settings: Settings, api_key: str) -> None:
    from lunasentri_core import __version__
    from lunasentri_core.agent.identity import Identity
    from lunasentri_core.agent.runner import Agent
    from lunasentri_core.agent.settings import AgentRunSettings
    from lunasentri_core.agent.spool import Spool
    from lunasentri_core.agent.transport import make_http_client

    options = AgentRunSettings.from_settings(settings)
    spool = await anyio.to_thread.run_sync(
        Spool.open, options.spool_dir, options.agent.spool_max_bytes
    )
    with make_http_client(options.agent, __version__) as http:

        def build() -> Agent:  # loads the collector plugins: imports, file reads
            return Agent(
                options,
                spool=spool,
                identity=Identity(options.spool_dir),
                http=http,
                version=__version__,
                api_key=api_key,
                announce=lambda agent_id, token: None,
            )

        agent = await anyio.to_thread.run_sync(build)

        async def stop_when_cancelled() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                agent.stop()

        async with anyio.create_task_group() as group:
            group.start_soon(stop_when_cancelled)
            # Not abandoned on cancellation: the server's shutdown waits for the
            # agent to finish its send in flight (stop_when_cancelled asks it to).
            await anyio.to_thread.run_sync(functools.partial(agent.run, handle_signals=False))
            group.cancel_scope.cancel()


def banner(settings: Settings, login: str, shown: str) -> str:
    """What the demo prints at start: how to log in, and an example with ``shown``."""
    url = settings.server.base_url
    lines = [
        "",
        "LunaSentri demo is running.",
        f"  dashboard:  {url}/",
        f"  API:        {url}/api/v1/openapi.json",
        f"  health:     {url}/healthz   metrics: {url}/metrics",
        f"  log in:     {login}",
        "  try:",
        f"    TOKEN=$(curl -s {url}/api/v1/auth/login -H 'content-type: application/json' \\",
        f'      -d \'{{"username": "{settings.admin_username}", '
        f'"password": "{shown}"}}\' | python3 -c '
        "'import json,sys; print(json.load(sys.stdin)[\"token\"])')",
        f'    curl -s {url}/api/v1/machines -H "authorization: Bearer $TOKEN"',
        "  An in-process agent reports this machine every 5 s. Stop with Ctrl-C.",
        "",
    ]
    return "\n".join(lines)
