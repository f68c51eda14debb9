"""Settings: a TOML file, then ``LUNASENTRI_*`` environment overrides, then arguments.

Environment variables map onto keys: ``LUNASENTRI_LOG_LEVEL`` sets ``log_level``;
a double underscore descends into a table, so ``LUNASENTRI_COLLECT__INTERVAL=10``
sets ``[collect] interval`` and ``LUNASENTRI_PLUGINS__PSUTIL__PER_CPU=true`` sets
``[plugins.psutil] per_cpu``. Values are read as TOML literals (``10``, ``true``,
``["a", "b"]``) and fall back to plain strings.

Every error names its exact path: ``collect.interval: expected a duration ...``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs

from lunasentri_core.agent.settings import AgentSettings
from lunasentri_core.codec import decode
from lunasentri_core.errors import ConfigError, ValidationError
from lunasentri_core.model import RetentionPolicy

ENV_PREFIX = "LUNASENTRI_"
CONFIG_ENV = "LUNASENTRI_CONFIG"
TEST_ENV_PREFIX = "LUNASENTRI_TEST_"
"""Variables for the test suite (e.g. which PostgreSQL to use); never settings."""
DEFAULT_CONFIG_NAME = "lunasentri.toml"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "lunasentri"


def _positive(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{attribute.name} must be positive")


@attrs.frozen
class CollectSettings:
    """Local collection by the hub (``Sentri.run_collectors``) and the agent."""

    interval: timedelta = attrs.field(default=timedelta(seconds=5), validator=_positive)
    collectors: tuple[str, ...] = ("psutil",)
    timeout: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive)


@attrs.frozen
class StorageSettings:
    url: str | None = None
    """SQLAlchemy-style URL; the default is a SQLite file in ``data_dir``."""
    retention: RetentionPolicy = RetentionPolicy()
    maintenance_interval: timedelta = attrs.field(
        default=timedelta(seconds=30), validator=_positive
    )
    """How often the hub compacts, rolls up and expires stored points."""


@attrs.frozen
class ServerSettings:
    """The reference server (``lunasentri serve``)."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    """How agents reach this server (install commands); default ``http(s)://host:port``."""
    log_format: str = attrs.field(default="text", validator=attrs.validators.in_(("text", "json")))
    cors_origins: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body, after gzip decompression."""
    max_batch_points: int = 100_000
    """Most readings in one ingest request."""
    ingest_rate: float = 20_000.0
    """Points per second a machine may send on average (a token bucket)..."""
    ingest_burst: float = 200_000.0
    """...and at once."""
    max_clock_skew: timedelta = timedelta(minutes=10)
    """How far in the future a sample's timestamp may be."""
    max_sample_age: timedelta = timedelta(days=7)
    """How far in the past a sample's timestamp may be."""
    session_ttl: timedelta = timedelta(days=7)
    reset_token_ttl: timedelta = timedelta(hours=1)
    claim_ttl: timedelta = timedelta(hours=24)
    key_rotation_grace: timedelta = timedelta(hours=24)
    login_max_failures: int = 5
    login_lockout: timedelta = timedelta(minutes=15)
    metrics_series: bool = False
    """Expose the latest stored value of every machine's series on /metrics (opt-in)."""

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


@attrs.frozen
class Settings:
    data_dir: Path = attrs.field(factory=default_data_dir, converter=Path)
    log_level: str = attrs.field(default="info")
    storage: StorageSettings = StorageSettings()
    collect: CollectSettings = CollectSettings()
    server: ServerSettings = ServerSettings()
    agent: AgentSettings = AgentSettings()
    local_host_metrics: bool = False
    """Whether the server collects and reports the host it runs on."""
    admin_username: str = "admin"
    admin_password: str | None = None
    """Creates the first admin at server start when no admin exists yet."""
    disabled_plugins: tuple[str, ...] = ()
    enabled_plugins: tuple[str, ...] | None = None
    """When set, only these plugins load (an allowlist for locked-down deployments)."""
    plugins: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    """Each plugin's own table, structured into its settings class by the plugin manager."""

    @log_level.validator
    def _check_level(self, attribute: attrs.Attribute[str], value: str) -> None:
        if value.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("expected one of debug, info, warning, error, critical")

    @property
    def storage_url(self) -> str:
        return self.storage.url or f"sqlite:///{self.data_dir / 'lunasentri.db'}"

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Read ``path`` (or ``$LUNASENTRI_CONFIG``, or ``./lunasentri.toml`` if present),
        apply environment overrides, then keyword ``overrides`` (top-level keys)."""
        environ = os.environ if environ is None else environ
        data = read_toml(_config_path(path, environ))
        merge(data, env_overrides(environ))
        merge(data, overrides)
        return settings_from_mapping(data)


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    if "plugins" in data and not isinstance(data["plugins"], Mapping):
        raise ConfigError("invalid settings: plugins: expected a table of [plugins.<name>]")
    try:
        return decode(dict(data), Settings, what="settings")
    except ValidationError as error:
        raise ConfigError(str(error)) from None


def _config_path(path: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    if path is not None:
        return Path(path)
    if CONFIG_ENV in environ:
        return Path(environ[CONFIG_ENV])
    local = Path(DEFAULT_CONFIG_NAME)
    return local if local.is_file() else None


def read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
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


def _parse_env_value(raw: str) -> Any:
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
