"""The ``[agent]`` settings table, and the settings an agent process runs with.

Imported by :mod:`lunasentri_core.config`, so this module imports only attrs,
:mod:`lunasentri_core.samples` and the standard library: anything heavier would
load for every command.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lunasentri_core.errors import InvalidValue
from lunasentri_core.samples import Labels, to_labels

if TYPE_CHECKING:
    from lunasentri_core.config import Settings


def mask_secret(value: str | None) -> str:
    """How a secret setting shows in a repr: whether it is set, never its value."""
    return "None" if value is None else "'***'"


def _positive(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise InvalidValue("must be positive", attribute)


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise InvalidValue("must be at least 1", attribute)


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


@attrs.frozen
class AgentSettings:
    """The push agent (``lunasentri agent``); flags override these, central config overrides
    ``interval``, ``collectors`` and ``labels`` once the server has one for the machine."""

    server_url: str | None = None
    """Where the server listens, e.g. ``https://monitor.example.com``."""
    api_key: str | None = attrs.field(default=None, repr=mask_secret)
    """The machine's API key (``lsk_...``); without one the agent enrols by claim."""
    interval: timedelta = attrs.field(default=timedelta(seconds=5), validator=_positive)
    collectors: tuple[str, ...] = ("psutil",)
    labels: Labels = attrs.field(default=(), converter=to_labels)
    spool_dir: Path | None = attrs.field(default=None, converter=_optional_path)
    """Queue and identity files; default ``<data_dir>/agent-spool``."""
    spool_max_bytes: int = attrs.field(default=50 * 1024 * 1024, validator=_at_least_one)
    """Spooled samples beyond this are dropped, oldest first."""
    send_interval: timedelta = attrs.field(default=timedelta(seconds=15), validator=_positive)
    """How long samples may wait in the spool to go out together (the first goes at once).

    Each request costs the agent more CPU than a collection does; sending every
    third sample at a 5 s interval keeps the agent near 0.05 % of a core. Set it
    to ``interval`` (or less) to send every sample as soon as it is collected.
    """
    batch_max_samples: int = attrs.field(default=100, validator=_at_least_one)
    timeout: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive)
    """Per HTTP request."""
    agent_id: str | None = None
    """Default: a random id generated once and kept in the spool directory."""
    hostname: str | None = None
    """Reported at registration; default: this machine's host name."""
    verify_tls: bool = True
    ca_file: Path | None = attrs.field(default=None, converter=_optional_path)
    """A CA bundle (PEM) to trust instead of the system's, e.g. for a private CA."""
    backoff_max: timedelta = attrs.field(default=timedelta(seconds=30), validator=_positive)
    """Longest wait between failed sends (delays grow exponentially with full jitter).

    Well under the server's default offline threshold (2 minutes), so an agent that
    kept running through a server outage reports again before the server's grace
    after its restart runs out. While the server does not answer at all, the agent
    also probes it every few seconds and sends as soon as it answers."""
    config_poll_interval: timedelta = attrs.field(
        default=timedelta(seconds=60), validator=_positive
    )
    """How often the agent asks the server for its central configuration."""
    summary_interval: timedelta = attrs.field(default=timedelta(minutes=15), validator=_positive)
    """How often the agent logs what it did (at ``info``), so a healthy agent is seen working."""

    def resolved_spool_dir(self, data_dir: Path) -> Path:
        return self.spool_dir if self.spool_dir is not None else data_dir / "agent-spool"


def _default_data_dir() -> Path:
    from lunasentri_core.config_sources import default_data_dir

    return default_data_dir()


@attrs.frozen
class AgentRunSettings:
    """What an agent uses of the settings: its own table and a few shared keys.

    :func:`load_agent_settings` reads them for an agent process without loading
    the server's settings; :meth:`from_settings` takes them from full settings
    (the demo's in-process agent, an application embedding the agent).
    """

    agent: AgentSettings = AgentSettings()
    data_dir: Path = attrs.field(factory=_default_data_dir, converter=Path)
    collect_timeout: timedelta = timedelta(seconds=10)
    """``[collect] timeout``: how long one collection may take."""
    plugins: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    """``[plugins.<name>]`` tables, structured by each plugin's settings class."""
    disabled_plugins: tuple[str, ...] = ()
    enabled_plugins: tuple[str, ...] | None = None
    log_level: str = "info"

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentRunSettings:
        return cls(
            agent=settings.agent,
            data_dir=settings.data_dir,
            collect_timeout=settings.collect.timeout,
            plugins=settings.plugins,
            disabled_plugins=settings.disabled_plugins,
            enabled_plugins=settings.enabled_plugins,
            log_level=settings.log_level.lower(),
        )

    @property
    def spool_dir(self) -> Path:
        return self.agent.resolved_spool_dir(self.data_dir)


def load_agent_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> AgentRunSettings:
    """The agent's settings from the same sources as ``Settings.load`` (the file, then
    ``LUNASENTRI_*`` variables, then top-level ``overrides``), with the same errors."""
    from lunasentri_core.config_sources import raw_settings

    return agent_settings_from_mapping(raw_settings(path, environ, overrides))


def agent_settings_from_mapping(data: Mapping[str, Any]) -> AgentRunSettings:
    from lunasentri_core.agent.settings_reader import Unsupported

    try:
        return _read(data)
    except Unsupported:
        pass
    # Something to report, or a form only the full settings know: they decide.
    from lunasentri_core.config import settings_from_mapping

    return AgentRunSettings.from_settings(settings_from_mapping(data))


_COLLECT_KEYS = frozenset({"interval", "collectors", "timeout"})


def _read(data: Mapping[str, Any]) -> AgentRunSettings:
    from lunasentri_core.agent import settings_reader as read

    known = {"data_dir", "log_level", "collect", "agent", "plugins"}
    known |= {"disabled_plugins", "enabled_plugins"}
    if not set(data) <= known:
        raise read.Unsupported
    level = read.string(data.get("log_level", "info"))
    if level.lower() not in read.LOG_LEVELS:
        raise read.Unsupported
    collect = data.get("collect", {})
    if not isinstance(collect, Mapping) or not set(collect) <= _COLLECT_KEYS:
        raise read.Unsupported
    for key in ("interval", "timeout"):
        if key in collect and read.duration(collect[key]) <= timedelta(0):
            raise read.Unsupported
    if "collectors" in collect:
        read.names(collect["collectors"])
    options: dict[str, Any] = {"log_level": level.lower()}
    if "data_dir" in data:
        options["data_dir"] = read.path(data["data_dir"])
    if "timeout" in collect:
        options["collect_timeout"] = read.duration(collect["timeout"])
    if "plugins" in data:
        options["plugins"] = read.plugin_tables(data["plugins"])
    if "disabled_plugins" in data:
        options["disabled_plugins"] = read.names(data["disabled_plugins"])
    if "enabled_plugins" in data:
        options["enabled_plugins"] = read.read_field(
            data["enabled_plugins"], "tuple[str, ...] | None"
        )
    try:
        agent = AgentSettings(**read.read_table(data.get("agent", {}), AgentSettings))
    except (TypeError, ValueError):
        raise read.Unsupported from None
    return AgentRunSettings(agent=agent, **options)
