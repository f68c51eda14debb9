"""``lunasentri agent``."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import click

from lunasentri_core.agent.settings import AgentRunSettings, load_agent_settings
from lunasentri_core.errors import LunaSentriError

if TYPE_CHECKING:
    from lunasentri_core.agent.claim import Announce, Claimed
    from lunasentri_core.agent.identity import Identity
    from lunasentri_core.agent.spool import Spool

log = logging.getLogger(__name__)


@click.command()
@click.option("--server", "server_url", help="Server URL. Default: [agent] server_url.")
@click.option(
    "--api-key",
    help="The machine's API key (visible in the process list: prefer "
    "LUNASENTRI_AGENT__API_KEY or the settings file). Without one: claim mode.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between samples. Default: [agent] interval (5).",
)
@click.option(
    "--collector",
    "collectors",
    multiple=True,
    help="Collector plugin to run (repeatable). Default: [agent] collectors.",
)
@click.option("--once", is_flag=True, help="Collect one sample, send the spool, exit.")
@click.option(
    "--claim", "force_claim", is_flag=True, help="Enrol by claim even if an API key is known."
)
@click.option(
    "--print-systemd-unit", is_flag=True, help="Print a systemd unit for this agent and exit."
)
@click.pass_context
def agent(
    ctx: click.Context,
    server_url: str | None,
    api_key: str | None,
    interval: float | None,
    collectors: Sequence[str],
    once: bool,
    force_claim: bool,
    print_systemd_unit: bool,
) -> None:
    """Collect this machine's metrics and push them to a server.

    Samples are spooled on disk first, so nothing is lost while the server is
    unreachable; see the agent documentation for settings and service setup.
    """
    config = getattr(ctx.obj, "config", None)
    try:
        settings = _settings(config, server_url, api_key, interval, collectors)
    except LunaSentriError as error:
        raise click.ClickException(str(error)) from None
    _set_log_level(getattr(ctx.obj, "log_level", None) or settings.log_level)
    if print_systemd_unit:
        from lunasentri_core.agent.systemd import agent_command, systemd_unit

        click.echo(systemd_unit(agent_command(), _unit_environment(config, settings, ctx)))
        return
    if not settings.agent.server_url:
        raise click.ClickException(
            "no server URL: set [agent] server_url, LUNASENTRI_AGENT__SERVER_URL or --server"
        )
    if once and force_claim:
        raise click.UsageError("--once sends with a known key; enrol by claim without --once")
    try:
        _run(settings, once, force_claim)
    except LunaSentriError as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        # Ctrl+C before the agent handles signals itself (while it starts, or in
        # --once); the spool is consistent at any point.
        log.warning("interrupted; spooled samples are kept for the next start")


def _set_log_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    # httpx logs every request at info: a line per send is noise unless debugging.
    quiet = logging.DEBUG if logging.getLogger().level <= logging.DEBUG else logging.WARNING
    logging.getLogger("httpx").setLevel(quiet)


def _settings(
    config: Path | None,
    server_url: str | None,
    api_key: str | None,
    interval: float | None,
    collectors: Sequence[str],
) -> AgentRunSettings:
    settings = load_agent_settings(config)
    flags: dict[str, Any] = {}
    if server_url:
        flags["server_url"] = server_url
    if api_key:
        flags["api_key"] = api_key
    if interval is not None:
        flags["interval"] = timedelta(seconds=interval)
    if collectors:
        flags["collectors"] = tuple(collectors)
    return attrs.evolve(settings, agent=attrs.evolve(settings.agent, **flags))


def _unit_environment(
    config: Path | None, settings: AgentRunSettings, ctx: click.Context
) -> dict[str, str]:
    environment: dict[str, str] = {}
    if config is not None:
        environment["LUNASENTRI_CONFIG"] = str(config.absolute())
    if settings.agent.server_url:
        environment["LUNASENTRI_AGENT__SERVER_URL"] = settings.agent.server_url
    if ctx.params.get("interval") is not None:
        environment["LUNASENTRI_AGENT__INTERVAL"] = f"{ctx.params['interval']:g}"
    if ctx.params.get("collectors"):
        names = ", ".join(f'"{name}"' for name in ctx.params["collectors"])
        environment["LUNASENTRI_AGENT__COLLECTORS"] = f"[{names}]"
    return environment


def _run(settings: AgentRunSettings, once: bool, force_claim: bool) -> None:
    # Imported here so that `lunasentri --help` and other commands never load httpx.
    from lunasentri_core.agent.identity import Identity
    from lunasentri_core.agent.spool import Spool, SpoolBusy, lock_directory

    options = settings.agent
    spool_dir = settings.spool_dir
    identity = Identity(spool_dir, options.agent_id)
    try:
        lock = lock_directory(spool_dir)
    except SpoolBusy as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot use the spool directory {spool_dir}: {error}") from None
    try:
        try:
            spool = Spool.open(spool_dir, options.spool_max_bytes)
            identity.agent_id()
            api_key = None if force_claim else (options.api_key or identity.api_key())
        except OSError as error:
            raise click.ClickException(
                f"cannot use the spool directory {spool_dir}: {error}"
            ) from None
        _drive(settings, spool, identity, api_key, once)
    finally:
        os.close(lock)


def _drive(
    settings: AgentRunSettings, spool: Spool, identity: Identity, api_key: str | None, once: bool
) -> None:
    from lunasentri_core.agent.entry_points import agent_version
    from lunasentri_core.agent.runner import Agent
    from lunasentri_core.agent.transport import make_http_client

    options = settings.agent
    version = agent_version()
    with make_http_client(options, version) as http:
        runner = Agent(
            settings,
            spool=spool,
            identity=identity,
            http=http,
            version=version,
            api_key=api_key,
            announce=_announce(options.server_url or ""),
            claimed=_claimed(options.server_url or "", options.interval.total_seconds()),
        )
        if once:
            result = runner.run_once()
            if not result.ok:
                reason = result.error or f"{result.dead_lettered} sample(s) refused as invalid"
                raise click.ClickException(
                    f"not delivered: {reason}; {result.remaining} sample(s) stay spooled "
                    f"in {spool.queue_dir}"
                )
            click.echo(f"delivered {result.delivered} sample(s) to {options.server_url}")
            return
        log.info(
            "agent %s on %s sends to %s; collects every %g s with %s",
            runner.target.machine_id,
            options.hostname or socket.gethostname(),
            options.server_url,
            runner.interval,
            ", ".join(runner.collector_names),
        )
        runner.run()
        log.info(
            "agent stopped: %d collected, %d delivered, %d spooled",
            runner.stats.collected,
            runner.stats.delivered,
            len(spool),
        )


def _announce(server_url: str) -> Announce:
    def announce(agent_id: str, claim_token: str) -> None:
        click.echo(
            "\n".join(
                [
                    "This agent waits to be claimed. An administrator claims it on "
                    f"{server_url} with:",
                    f"  agent id:    {agent_id}",
                    f"  claim token: {claim_token}",
                    f"(POST /api/v1/agents/{agent_id}/claim). "
                    "The agent starts sending as soon as it is claimed.",
                ]
            )
        )

    return announce


def _claimed(server_url: str, interval: float) -> Claimed:
    def claimed(agent_id: str) -> None:
        # The announcement above was printed, not logged: so is its outcome.
        click.echo(
            f"Agent {agent_id} is claimed; its API key is stored. "
            f"It collects every {interval:g} s and sends to {server_url}."
        )

    return claimed
