"""The ``lunasentri`` command."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import click

from lunasentri_core.errors import LunaSentriError

if TYPE_CHECKING:
    from lunasentri_core.config import Settings
    from lunasentri_core.model import Reading, Target
    from lunasentri_core.plugins import PluginFailure, PluginInfo, PluginManager
    from lunasentri_core.services.collection import CollectionResult

# Each command imports what it uses when it runs, so that `lunasentri agent` never
# loads the hub and its services (see _LazyGroup and docs/benchmarks.md).

F = TypeVar("F", bound=Callable[..., Any])

_BYTES_METRICS = ("bytes", ".total", ".used", ".available", ".size")


class _Context:
    def __init__(self, config: Path | None, log_level: str | None = None) -> None:
        self.config = config
        self.log_level = log_level
        """``--log-level`` when given: it wins over the settings' ``log_level``."""

    def settings(self) -> Settings:
        from lunasentri_core.config import Settings

        return Settings.load(self.config)

    def plugin_manager(self) -> PluginManager:
        from lunasentri_core.plugins import create_plugin_manager

        return create_plugin_manager(self.settings())


def _friendly_errors(func: F) -> F:
    """Turn LunaSentri errors into a one-line message and exit status 1, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LunaSentriError as error:
            raise click.ClickException(str(error)) from None

    return wrapper  # type: ignore[return-value]


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when that command runs (or help lists it).

    ``lunasentri agent`` must stay small: importing the server's commands would
    load Starlette, the routes and prometheus_client into every agent.
    """

    lazy: ClassVar[dict[str, str]] = {
        "serve": "lunasentri_core.server.serve:serve",
        "users": "lunasentri_core.server.commands:users",
        "keys": "lunasentri_core.server.commands:keys",
        "discover": "lunasentri_core.server.discover:discover",
        "monitors": "lunasentri_core.server.monitor_commands:monitors",
        "agent": "lunasentri_core.agent.command:agent",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = self.lazy[cmd_name].split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command


@click.group(cls=_LazyGroup)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="LUNASENTRI_CONFIG",
    help="Settings file (TOML). Default: ./lunasentri.toml if present.",
)
@click.option(
    "--log-level",
    help="Logging level (default warning; the server and the agent use log_level, default info).",
)
@click.version_option(package_name="lunasentri-core")
@click.pass_context
def main(ctx: click.Context, config: Path | None, log_level: str | None) -> None:
    """LunaSentri: monitor machines with plugins."""
    level = (log_level or "warning").upper()
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = _Context(config, log_level)


# --------------------------------------------------------------------------- plugins


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--storage",
    "show_storage",
    is_flag=True,
    help="Also open the configured storage (no migration) and show its backend and mode.",
)
@click.option(
    "--list-only",
    is_flag=True,
    help="Only list: exit 0 even when a plugin failed to load.",
)
@click.pass_obj
@_friendly_errors
def plugins(obj: _Context, as_json: bool, show_storage: bool, list_only: bool) -> None:
    """List discovered plugins with versions, hooks and failures.

    Exits with status 1 when a plugin failed to load or a [plugins.<name>] table
    names no loaded component, unless --list-only is given, and when --storage
    cannot open the storage: a deployment check can run it as it is.
    """
    from lunasentri_core.codec import encode

    manager = obj.plugin_manager()
    infos, failures, disabled = manager.infos(), manager.failures, manager.disabled()
    stray = manager.stray_settings()
    storage = _describe_storage(obj, manager) if show_storage else None
    if as_json:
        report: dict[str, object] = {
            "plugins": encode(infos),
            "failures": encode(list(failures)),
            "disabled": disabled,
            "stray_settings": stray,
        }
        if storage is not None:
            report["storage"] = storage
        click.echo(json.dumps(report, indent=2))
    else:
        _echo_plugins(infos, failures, disabled, storage)
        _echo_stray(stray, manager.component_names())
    problems = _plugin_problems(failures, stray)
    if problems and not list_only:
        click.echo(f"{'; '.join(problems)} (--list-only ignores this)", err=True)
    if (problems and not list_only) or (storage is not None and "error" in storage):
        raise SystemExit(1)


def _plugin_problems(failures: Sequence[PluginFailure], stray: Sequence[str]) -> list[str]:
    problems = []
    if failures:
        problems.append(f"plugins failed to load: {', '.join(sorted({f.name for f in failures}))}")
    if stray:
        tables = ", ".join(f"[plugins.{name}]" for name in stray)
        problems.append(f"settings tables name no loaded component: {tables}")
    return problems


def _echo_stray(stray: Sequence[str], components: set[str]) -> None:
    if stray:
        click.echo("\nsettings tables naming no loaded component (keyed by component name):")
        for name in stray:
            click.secho(f"  [plugins.{name}]", fg="yellow")
        click.echo(f"  loaded components: {', '.join(sorted(components)) or 'none'}")


def _echo_plugins(
    infos: Sequence[PluginInfo],
    failures: Sequence[PluginFailure],
    disabled: Sequence[str],
    storage: dict[str, object] | None,
) -> None:
    rows = [
        (i.name, i.distribution or "-", i.version or "-", ", ".join(i.components) or "-")
        for i in infos
    ]
    click.echo(_table(("plugin", "distribution", "version", "provides"), rows))
    for info in infos:
        click.echo(f"  {info.name}: hooks {', '.join(info.hooks) or 'none'}")
    if disabled:
        click.echo(f"\ndisabled by settings: {', '.join(disabled)}")
    if failures:
        click.echo("\nfailed to load:")
        for failure in failures:
            click.secho(f"  {failure.name} [{failure.stage}]: {failure.reason}", fg="red")
    if storage is not None:
        _echo_storage(storage)


def _describe_storage(obj: _Context, manager: PluginManager) -> dict[str, object]:
    """The configured storage's backend, mode and capabilities (it is opened, not migrated)."""
    from urllib.parse import urlsplit

    from lunasentri_core.storage import storage_mode, storage_partitioning

    settings = obj.settings()
    url = settings.storage_url
    about: dict[str, object] = {"url": _redact(url)}
    try:
        component = manager.storage_for_scheme(urlsplit(url).scheme or "sqlite")
        backend = component.cls.open(
            url, settings=component.settings, retention=settings.storage.retention
        )
    except LunaSentriError as error:
        about["error"] = str(error)
        return about
    try:
        about["backend"] = backend.name
        about["mode"] = storage_mode(backend)
        about["capabilities"] = sorted(c.value for c in backend.capabilities)
        about["partitioning"] = storage_partitioning(backend)
    except LunaSentriError as error:
        about["error"] = str(error)
    finally:
        backend.close()
    return about


def _echo_storage(storage: dict[str, object]) -> None:
    click.echo(f"\nstorage: {storage['url']}")
    if "error" in storage:
        click.secho(f"  cannot open it: {storage['error']}", fg="red")
        return
    mode = storage.get("mode")
    click.echo(f"  backend {storage['backend']}" + (f", {mode} mode" if mode else ""))
    capabilities = storage.get("capabilities") or []
    assert isinstance(capabilities, list)
    click.echo(f"  capabilities: {', '.join(capabilities) or 'none'}")
    parts = storage.get("partitioning")
    if isinstance(parts, dict):
        click.echo(
            f"  partitioning: {parts.get('kind')}, {parts.get('table')} by {parts.get('column')}, "
            f"{parts.get('width_hours')} h wide, {parts.get('ahead')} ahead, "
            f"{parts.get('partitions')} partitions"
        )


# --------------------------------------------------------------------------- collect


@main.command(name="collect")
@click.option("--once", is_flag=True, help="Collect one sample, print it and exit.")
@click.option(
    "--collector",
    "collectors",
    multiple=True,
    help="Collector plugin to run (repeatable). Default: [collect] collectors.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON samples instead of tables.")
@click.pass_obj
@_friendly_errors
def collect_command(obj: _Context, once: bool, collectors: Sequence[str], as_json: bool) -> None:
    """Print this machine's metrics (every interval, or --once)."""
    import anyio

    from lunasentri_core.model import Target, new_id
    from lunasentri_core.plugins import ComponentKind, create_plugin_manager

    settings = obj.settings()
    manager = create_plugin_manager(settings)
    names = list(collectors) or list(settings.collect.collectors)
    instances = {name: manager.component(ComponentKind.COLLECTOR, name).create() for name in names}
    target = Target(new_id())
    anyio.run(_collect_loop, settings, instances, target, once, as_json)


async def _collect_loop(
    settings: Settings, instances: dict[str, Any], target: Target, once: bool, as_json: bool
) -> None:
    import anyio

    # Rates and cpu.percent need a previous measurement: take a silent first one.
    if instances:
        await _collect(settings, instances, target)
        await anyio.sleep(min(1.0, settings.collect.interval.total_seconds()))
    while True:
        result = await _collect(settings, instances, target)
        _print_sample(result, as_json)
        if once:
            return
        await anyio.sleep(settings.collect.interval.total_seconds())


async def _collect(
    settings: Settings, instances: dict[str, Any], target: Target
) -> CollectionResult:
    from lunasentri_core.model import utcnow
    from lunasentri_core.services.collection import collect

    return await collect(instances, target, timeout=settings.collect.timeout, clock=utcnow)


def _print_sample(result: CollectionResult, as_json: bool) -> None:
    from lunasentri_core.codec import encode

    if as_json:
        click.echo(json.dumps(encode(result.sample)))
        return
    click.echo(f"{socket.gethostname()} at {result.sample.timestamp.isoformat(timespec='seconds')}")
    rows = [(r.metric, _labels(r), _format_value(r)) for r in result.sample.readings]
    click.echo(_table(("metric", "labels", "value"), rows, align_right={2}))
    for name, reason in result.failures.items():
        click.secho(f"collector {name} failed: {reason}", fg="red", err=True)


def _labels(reading: Reading) -> str:
    return ",".join(f"{k}={v}" for k, v in reading.labels)


def _format_value(reading: Reading) -> str:
    value = reading.value
    if reading.metric.endswith("percent"):
        return f"{value:.1f} %"
    if reading.metric.endswith("_rate"):
        return f"{_human_bytes(value)}/s"
    if any(reading.metric.endswith(suffix) for suffix in _BYTES_METRICS):
        return _human_bytes(value)
    return f"{value:g}"


def _human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- plugin


@main.group()
def plugin() -> None:
    """Tools for plugin authors."""


@plugin.command(name="new")
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice(["collector", "notifier", "authenticator", "storage"]),
    required=True,
    help="The kind of component the plugin registers.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the project (default ./NAME); must not exist or be empty.",
)
def plugin_new(name: str, kind: str, directory: Path | None) -> None:
    """Generate a plugin distribution named NAME (e.g. lunasentri-tcpcheck).

    The project installs and passes its own tests as generated: a pyproject.toml
    with the entry point, a typed skeleton of the kind, the test kit's contract
    suites, a noxfile and a README.
    """
    from lunasentri_core.scaffold import BadNameError, Kind, ScaffoldError, generate

    target = Path(name) if directory is None else directory
    try:
        written = generate(name, Kind(kind), target)
    except BadNameError as error:
        raise click.BadParameter(str(error), param_hint="NAME") from None
    except ScaffoldError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"created {target} ({len(written)} files), a {kind} plugin:")
    for path in written:
        click.echo(f"  {path.as_posix()}")
    click.echo(f"next: cd {target} && python -m pip install -e '.[test]' && python -m pytest")


# --------------------------------------------------------------------------- db


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@click.pass_obj
@_friendly_errors
def migrate(obj: _Context) -> None:
    """Create or upgrade the database schema to the current version."""
    from lunasentri_core.hub import open_storage
    from lunasentri_core.plugins import create_plugin_manager

    settings = obj.settings()
    storage = open_storage(settings, create_plugin_manager(settings))
    storage.close()
    click.echo(f"database {_redact(settings.storage_url)} is up to date")


@db.command(name="copy")
@click.argument("source_url")
@click.argument("target_url")
@_friendly_errors
def copy_command(source_url: str, target_url: str) -> None:
    """Copy a whole deployment (state and history) into a new, empty database.

    SOURCE_URL and TARGET_URL are sqlite: or postgresql: URLs, e.g.
    sqlite:////var/lib/lunasentri/lunasentri.db and
    postgresql://lunasentri@db.example/lunasentri. Stop the servers that use the
    source first. The target is migrated, then filled in one transaction; a
    target that already holds data is refused.
    """
    from lunasentri_core.storage.sql.copy import Progress, copy_database, open_engine

    def show(step: Progress) -> None:
        if step.finished:
            click.echo(f"  {step.table}: {step.done} rows copied")
        elif step.done:
            click.echo(f"  {step.table}: {step.done} of {step.total} rows")

    click.echo(f"copying {_redact(source_url)} to {_redact(target_url)}")
    source = open_engine(source_url, must_exist=True)
    try:
        target = open_engine(target_url)
        try:
            report = copy_database(source, target, progress=show)
        finally:
            target.dispose()
    finally:
        source.dispose()
    rows = [
        (t.table, str(t.source), str(t.target), "ok" if t.ok else "MISMATCH") for t in report.tables
    ]
    click.echo(_table(("table", "source", "target", "check"), rows, align_right={1, 2}))
    if not report.ok:
        names = ", ".join(t.table for t in report.mismatches)
        raise click.ClickException(
            f"row counts differ for {names}: the copy is not complete; "
            "empty or recreate the target and copy again"
        )
    click.echo(f"copied {sum(t.source for t in report.tables)} rows; counts verified")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# --------------------------------------------------------------------------- output


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], align_right: set[int] | None = None
) -> str:
    align_right = align_right or set()
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in align_right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


if __name__ == "__main__":
    main()
