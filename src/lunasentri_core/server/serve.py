"""``lunasentri serve``: run the reference server under uvicorn."""

from __future__ import annotations

import gc
import socket
import sys
from pathlib import Path
from typing import Any

import attrs
import click
import uvicorn

from lunasentri_core.config import Settings
from lunasentri_core.errors import LunaSentriError
from lunasentri_core.plugins import create_plugin_manager
from lunasentri_core.server.first_admin import DemoPassword, demo_password, require_admin
from lunasentri_core.server.instance_lock import server_lock
from lunasentri_core.server.logs import configure_logging

SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the GIL while another waits for it (Python's default is
0.005). The ingest writer's thread gives the GIL up around every SQLite statement
and then waits for the event loop's thread to let it go: with the default it
waited up to 5 ms each time, which made a transaction take several times its
work; bench_ingest_http.py measured a third more throughput at 1 ms."""


@click.command()
@click.option("--host", help="Interface to listen on (default 127.0.0.1; [server] host).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="TCP port (default 8080; 0 for any free port; [server] port).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the SQLite database and other state live (data_dir).",
)
@click.option("--demo", is_flag=True, help="Add an admin, this machine and an in-process agent.")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="[server] log_format.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="PEM file.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="PEM file.")
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    demo: bool,
    log_format: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Run the reference server (API, agent ingest, health and metrics endpoints)."""
    flags: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_format": log_format,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
    }
    try:
        settings = Settings.load(ctx.obj.config if ctx.obj is not None else None)
        server = attrs.evolve(settings.server, **{k: v for k, v in flags.items() if v is not None})
        settings = attrs.evolve(settings, server=server, data_dir=data_dir or settings.data_dir)
        kept = None
        if demo and settings.admin_password is None:
            kept = demo_password(settings.data_dir)
            settings = attrs.evolve(settings, admin_password=kept.value)
        configure_logging(settings.server.log_format, settings.log_level)
        if settings.strict_plugins:
            # Refused before anything is migrated; the hub warns (or refuses) at its start.
            create_plugin_manager(settings).check_settings_tables(strict=True)
        with server_lock(settings):
            if not demo:
                require_admin(settings)
            run(settings, demo=demo, demo_password=kept)
    except LunaSentriError as error:
        raise click.ClickException(str(error)) from None


def run(
    settings: Settings, *, demo: bool = False, demo_password: DemoPassword | None = None
) -> None:
    """Serve until interrupted; SIGINT/SIGTERM shut down gracefully (pending writes flushed)."""
    from lunasentri_core.server.app import create_app

    server = settings.server
    if (server.tls_cert is None) != (server.tls_key is None):
        raise click.UsageError("TLS needs both tls_cert and tls_key")
    app = create_app(settings=settings, demo=demo, demo_password=demo_password)
    options: dict[str, Any] = {}
    if server.tls_cert is not None and server.tls_key is not None:
        options = {"ssl_certfile": str(server.tls_cert), "ssl_keyfile": str(server.tls_key)}
    config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        # Agents send every 15 s by default; keep their connections across sends.
        timeout_keep_alive=75,
        **options,
    )
    # Ingest allocates many short-lived objects; with the default gen0 threshold the
    # collector took about 13 % of server CPU (measured by bench_ingest_http.py).
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    sys.setswitchinterval(SWITCH_INTERVAL)
    _Server(config).run()


class _Server(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn waits for open responses before shutting down; live streams never
        # end by themselves, so end them first.
        close_streams(self.config.app)
        await super().shutdown(sockets)


def close_streams(app: Any) -> None:
    """End every open live stream of ``app`` (callable from any thread)."""
    state = getattr(app, "state", None)
    live = getattr(state, "live", None)
    if live is not None:
        live.close()
    discovery_streams = getattr(state, "discovery_streams", None)
    if discovery_streams is not None:
        discovery_streams.set()
