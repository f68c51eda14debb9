"""The ``[agent]`` settings table.

Imported by :mod:`lunasentri_core.config`, so this module imports only attrs, the
model and the standard library: anything heavier would load for every command.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import attrs

from lunasentri_core.model import Labels, to_labels


def _positive(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{attribute.name} must be positive")


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1")


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


@attrs.frozen
class AgentSettings:
    """The push agent (``lunasentri agent``); flags override these, central config overrides
    ``interval``, ``collectors`` and ``labels`` once the server has one for the machine."""

    server_url: str | None = None
    """Where the server listens, e.g. ``https://monitor.example.com``."""
    api_key: str | None = None
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
    backoff_max: timedelta = attrs.field(default=timedelta(minutes=5), validator=_positive)
    """Longest wait between failed sends (delays grow exponentially with full jitter)."""
    config_poll_interval: timedelta = attrs.field(
        default=timedelta(seconds=60), validator=_positive
    )
    """How often the agent asks the server for its central configuration."""

    def resolved_spool_dir(self, data_dir: Path) -> Path:
        return self.spool_dir if self.spool_dir is not None else data_dir / "agent-spool"
