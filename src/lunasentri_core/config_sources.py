"""Where settings come from: a TOML file, then ``LUNASENTRI_*`` environment overrides.

Environment variables map onto keys: ``LUNASENTRI_LOG_LEVEL`` sets ``log_level``;
a double underscore descends into a table, so ``LUNASENTRI_COLLECT__INTERVAL=10``
sets ``[collect] interval`` and ``LUNASENTRI_PLUGINS__PSUTIL__PER_CPU=true`` sets
``[plugins.psutil] per_cpu``. Values are read as TOML literals (``10``, ``true``,
``["a", "b"]``) and fall back to plain strings.

This module only reads and merges raw values; :mod:`lunasentri_core.config`
structures them into the full settings and :mod:`lunasentri_core.agent.settings`
into the agent's part of them. Kept apart from both so that the push agent can
read its settings without loading the server's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lunasentri_core.errors import ConfigError

ENV_PREFIX = "LUNASENTRI_"
CONFIG_ENV = "LUNASENTRI_CONFIG"
TEST_ENV_PREFIX = "LUNASENTRI_TEST_"
"""Variables for the test suite (e.g. which PostgreSQL to use); never settings."""
DEFAULT_CONFIG_NAME = "lunasentri.toml"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "lunasentri"


def raw_settings(
    path: str | Path | None, environ: Mapping[str, str] | None, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The file at ``path`` (or ``$LUNASENTRI_CONFIG``, or ``./lunasentri.toml`` if
    present), with environment overrides, then ``overrides`` (top-level keys), merged."""
    environ = os.environ if environ is None else environ
    data = read_toml(config_path(path, environ))
    merge(data, env_overrides(environ))
    merge(data, overrides)
    return data


def config_path(path: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    if path is not None:
        return Path(path)
    if CONFIG_ENV in environ:
        return Path(environ[CONFIG_ENV])
    local = Path(DEFAULT_CONFIG_NAME)
    return local if local.is_file() else None


def read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import tomllib  # here: an agent run from flags alone never pays its 0.14 MiB

    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"settings file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"settings file {path} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read settings file {path}: {error.strerror}") from None


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The nested mapping that ``LUNASENTRI_*`` variables describe."""
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        if name.startswith(TEST_ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            raise ConfigError(f"environment variable {name}: empty key between '__'")
        merge(result, _nest(keys, _parse_env_value(raw)))
    return result


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(keys):
        value = {key: value}
    return value  # type: ignore[no-any-return]


_TOML_START = frozenset(" \t\"'[{+-.0123456789tfin")
"""A TOML value starts with one of these; anything else is a plain string."""


def _parse_env_value(raw: str) -> Any:
    # The common values (a URL, a key, a whole number) are read without
    # tomllib, which an agent configured by its environment then never loads.
    if not raw or raw[0] not in _TOML_START:
        return raw
    if raw.isascii() and raw.isdigit() and (raw[0] != "0" or raw == "0"):
        return int(raw)
    import tomllib

    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into ``base`` (tables merge, anything else replaces)."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            base[key] = merge(dict(base[key]), value)
        else:
            base[key] = value
    return base
