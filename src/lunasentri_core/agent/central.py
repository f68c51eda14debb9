"""The configuration a server holds for its agent (``GET /api/v1/agent/config``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, NamedTuple

from lunasentri_core.samples import LABEL_NAME, Labels, to_labels

_PLUGIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

MIN_INTERVAL = timedelta(seconds=1)
"""A central interval below this is raised to it: one typo must not flood the server."""


class InvalidCentralConfig(ValueError):
    pass


class CentralConfig(NamedTuple):
    interval: timedelta
    collectors: tuple[str, ...]
    labels: Labels
    version: str
    etag: str
    """What to send as ``If-None-Match`` next time."""


def parse_central_config(body: Mapping[str, Any], etag: str | None) -> CentralConfig:
    """Check the fields the agent uses; others (machine_id, updated_at ...) are ignored."""
    interval = body.get("interval")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise InvalidCentralConfig(f"interval: expected positive seconds, got {interval!r}")
    collectors = body.get("collectors")
    if not isinstance(collectors, list) or not collectors:
        raise InvalidCentralConfig(f"collectors: expected a non-empty list, got {collectors!r}")
    if not all(isinstance(c, str) and _PLUGIN_NAME.match(c) for c in collectors):
        raise InvalidCentralConfig(f"collectors: expected plugin names, got {collectors!r}")
    labels = body.get("labels", {})
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and LABEL_NAME.match(k) and isinstance(v, str) for k, v in labels.items()
    ):
        raise InvalidCentralConfig(f"labels: expected names to strings, got {labels!r}")
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int | str):
        raise InvalidCentralConfig(f"version: expected a number or string, got {version!r}")
    return CentralConfig(
        interval=max(timedelta(seconds=interval), MIN_INTERVAL),
        collectors=tuple(dict.fromkeys(collectors)),
        labels=to_labels(labels),
        version=str(version),
        etag=etag or f'"{version}"',
    )
