"""Reading the agent's part of the settings without cattrs (1.5 MiB the agent saves).

This reader is a fast path, not a second implementation of the settings: it
accepts only what it can vouch for — the keys the agent uses, holding values
of the plain forms the full settings accept — and raises :class:`Unsupported`
for anything else. The caller then structures the whole mapping with the full
settings (:func:`lunasentri_core.config.settings_from_mapping`), which either
reports the problem with its exact path (``agent.interval: expected a duration
...``) or, for a valid but unusual form, gives the settings. So a mistake is
reported exactly as ``lunasentri serve`` would report it, and a settings file
that also holds the server's tables is checked whole, as before.
"""

from __future__ import annotations

import functools
import math
import os
import re
import types
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs

from lunasentri_core.samples import Labels

LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})

# The same forms as the codec's durations (seconds, or "30s", "5m", "2h" ...).
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


class Unsupported(Exception):
    """The value is wrong, or of a form this reader leaves to the full settings."""


def duration(value: object) -> timedelta:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise Unsupported
    if not math.isfinite(seconds) or seconds < 0:
        raise Unsupported
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise Unsupported from None


def string(value: object) -> str:
    if not isinstance(value, str):
        raise Unsupported
    return value


def integer(value: object) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Unsupported
    return value


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Unsupported
    return value


def path(value: object) -> Path:
    if isinstance(value, os.PathLike):
        return Path(value)
    return Path(string(value))


def names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise Unsupported
    return tuple(string(item) for item in value)


def labels(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise Unsupported
    return value


Reader = Callable[[object], Any]

_BY_TYPE: dict[object, Reader] = {
    str: string,
    int: integer,
    bool: boolean,
    timedelta: duration,
    Path: path,
    tuple[str, ...]: names,
    Labels: labels,
}
_BY_NAME: dict[str, Reader] = {
    "str": string,
    "int": integer,
    "bool": boolean,
    "timedelta": duration,
    "Path": path,
    "tuple[str, ...]": names,
    "Labels": labels,
}


def reader_for(annotation: object) -> Reader | None:
    """The reader for a field's annotation: a string while postponed (``from __future__
    import annotations``), or the type once resolved (cattrs resolves them in place)."""
    if isinstance(annotation, str):
        name, optional = annotation.removesuffix(" | None"), annotation.endswith(" | None")
        read = _BY_NAME.get(name)
    elif isinstance(annotation, types.UnionType) and type(None) in annotation.__args__:
        others = [arg for arg in annotation.__args__ if arg is not type(None)]
        optional, read = True, _BY_TYPE.get(others[0]) if len(others) == 1 else None
    else:
        optional, read = False, _BY_TYPE.get(annotation)
    if read is None or not optional:
        return read
    return functools.partial(_optional, read)


def _optional(read: Reader, value: object) -> Any:
    return None if value is None else read(value)


def read_table(value: object, cls: type[Any]) -> dict[str, Any]:
    """Keyword arguments for the attrs class ``cls`` from the table ``value``."""
    if not isinstance(value, Mapping):
        raise Unsupported
    fields = {field.name: field for field in attrs.fields(cls)}
    if not set(value) <= set(fields):
        raise Unsupported
    return {key: read_field(item, fields[key].type) for key, item in value.items()}


def read_field(value: object, annotation: object) -> Any:
    reader = reader_for(annotation)
    if reader is None:
        raise Unsupported
    return reader(value)


def plugin_tables(value: object) -> dict[str, dict[str, Any]]:
    if not isinstance(value, Mapping):
        raise Unsupported
    tables: dict[str, dict[str, Any]] = {}
    for name, table in value.items():
        if not isinstance(name, str) or not isinstance(table, Mapping):
            raise Unsupported
        tables[name] = dict(table)
    return tables
