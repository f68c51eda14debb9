"""Settings: a TOML file, then ``LUNASENTRI_*`` environment overrides, then arguments.

Environment variables map onto keys: ``LUNASENTRI_LOG_LEVEL`` sets ``log_level``;
a double underscore descends into a table, so ``LUNASENTRI_COLLECT__INTERVAL=10``
sets ``[collect] interval`` and ``LUNASENTRI_PLUGINS__PSUTIL__PER_CPU=true`` sets
``[plugins.psutil] per_cpu``. Values are read as TOML literals (``10``, ``true``,
``["a", "b"]``) and fall back to plain strings.

Every error names its exact path: ``collect.interval: expected a duration ...``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lunasentri_core.agent.settings import AgentSettings, mask_secret
from lunasentri_core.codec import decode

# Reading the file and the environment is shared with the push agent, which
# structures only its own part of the settings (agent/settings.py).
from lunasentri_core.config_sources import CONFIG_ENV as CONFIG_ENV
from lunasentri_core.config_sources import DEFAULT_CONFIG_NAME as DEFAULT_CONFIG_NAME
from lunasentri_core.config_sources import ENV_PREFIX as ENV_PREFIX
from lunasentri_core.config_sources import TEST_ENV_PREFIX as TEST_ENV_PREFIX
from lunasentri_core.config_sources import default_data_dir as default_data_dir
from lunasentri_core.config_sources import env_overrides as env_overrides
from lunasentri_core.config_sources import merge as merge
from lunasentri_core.config_sources import raw_settings
from lunasentri_core.config_sources import read_toml as read_toml
from lunasentri_core.errors import ConfigError, InvalidValue, ValidationError
from lunasentri_core.model import RetentionPolicy

if TYPE_CHECKING:
    from lunasentri_core.storage.protocols import PurgePolicy


def _positive(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise InvalidValue("must be positive", attribute)


def _not_negative(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value < timedelta(0):
        raise InvalidValue("must not be negative", attribute)


def _port(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise InvalidValue(f"expected a TCP port from 0 to 65535, got {value}", attribute)


def _at_least(bound: float) -> Callable[[object, attrs.Attribute[Any], float], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
        if value < bound:
            raise InvalidValue(f"must be at least {bound:g}, got {value:g}", attribute)

    return check


@attrs.frozen
class CollectSettings:
    """Local collection by the hub (``Sentri.run_collectors``) and the agent."""

    interval: timedelta = attrs.field(default=timedelta(seconds=5), validator=_positive)
    collectors: tuple[str, ...] = ("psutil",)
    timeout: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive)


@attrs.frozen
class PurgeSettings:
    """How the hub deletes server state that has served its purpose (``[storage.purge]``).

    The limits are those of :class:`~lunasentri_core.storage.PurgePolicy`; the
    login lockout window comes from ``server.login_lockout``.
    """

    enabled: bool = True
    interval: timedelta = attrs.field(default=timedelta(hours=1), validator=_positive)
    """How often the maintenance loop purges (at its first pass after start, then this often)."""
    grace: timedelta = attrs.field(default=timedelta(days=1), validator=_positive)
    """Ended sessions and reset tokens, and login failures past the lockout, are kept this long."""
    claims: timedelta = attrs.field(default=timedelta(days=7), validator=_positive)
    """Delivered and expired agent registrations are kept this long past their expiry."""
    outbox: timedelta = attrs.field(default=timedelta(days=30), validator=_positive)
    """Notifications whose deliveries have all finished are kept this long."""
    history: timedelta = attrs.field(default=timedelta(days=90), validator=_positive)
    """Machines' status changes and alert events are kept this long."""

    def policy(self, login_window: timedelta) -> PurgePolicy:
        # Imported here: the push agent loads this module but never the storage layer.
        from lunasentri_core.storage.protocols import PurgePolicy

        return PurgePolicy(
            grace=self.grace,
            login_window=login_window,
            claims=self.claims,
            outbox=self.outbox,
            history=self.history,
        )


@attrs.frozen
class StorageSettings:
    url: str | None = None
    """SQLAlchemy-style URL; the default is a SQLite file in ``data_dir``."""
    retention: RetentionPolicy = RetentionPolicy()
    maintenance_interval: timedelta = attrs.field(
        default=timedelta(seconds=30), validator=_positive
    )
    """How often the hub compacts, rolls up and expires stored points."""
    purge: PurgeSettings = PurgeSettings()
    max_series_per_machine: int = attrs.field(default=10_000, validator=_at_least(1))
    """Most series one machine may have; a batch that would add more is refused whole
    (one machine's cardinality must not slow everyone's ingest)."""


@attrs.frozen
class NotificationSettings:
    """How the hub delivers notifications from the outbox to channels."""

    max_attempts: int = attrs.field(default=8, validator=_at_least(1))
    """Attempts per delivery before it is dead-lettered."""
    backoff: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive)
    """Wait before the first retry; it doubles with every attempt (with jitter)."""
    max_backoff: timedelta = attrs.field(default=timedelta(hours=1), validator=_positive)
    send_timeout: timedelta = attrs.field(default=timedelta(seconds=30), validator=_positive)
    """How long one send may take before it counts as a failed attempt."""
    lease: timedelta = attrs.field(default=timedelta(minutes=2), validator=_positive)
    """How long a taken delivery is this process's; after a crash another takes it then."""
    poll_interval: timedelta = attrs.field(default=timedelta(seconds=2), validator=_positive)
    """How often the outbox is checked for work written by other processes."""
    concurrency: int = attrs.field(default=8, validator=_at_least(1))


@attrs.frozen
class AgentlessSettings:
    """The agentless poller (``[agentless]``): how monitors of remote hosts are polled."""

    enabled: bool = True
    """Whether the hub polls monitors (another process sharing the database may do it)."""
    workers: int = attrs.field(default=64, validator=_at_least(1))
    """Polls under way at once, at most; a hung host holds one of them until its timeout."""
    poll_timeout: timedelta = attrs.field(default=timedelta(seconds=30), validator=_positive)
    """How long one attempt of a poll may take."""
    retries: int = attrs.field(default=2, validator=_at_least(0))
    """Attempts after the first before a poll counts as failed."""
    retry_backoff: timedelta = attrs.field(default=timedelta(seconds=1), validator=_positive)
    """Wait before the first retry; it doubles with every retry (with jitter)."""
    tick: timedelta = attrs.field(default=timedelta(seconds=1), validator=_positive)
    """How often the scheduler claims the monitors due by the next tick (each poll
    then starts at its due time)."""
    lease: timedelta | None = attrs.field(default=None)
    """How long a claimed poll holds its monitor; when a process dies, another (sharing
    the database) polls the monitor once this has passed. Default: the longest a poll
    can take (every attempt timing out, every backoff at its longest) plus a margin."""

    @lease.validator
    def _check_lease(self, attribute: attrs.Attribute[timedelta | None], value: Any) -> None:
        if value is not None and value <= self.longest_poll:
            raise InvalidValue(
                f"must be longer than a poll can take ({self.longest_poll.total_seconds():g}s: "
                "poll_timeout x (retries + 1) + the retries' backoff)",
                attribute,
            )

    @property
    def longest_poll(self) -> timedelta:
        """Every attempt timing out, and every backoff at its longest (1.5 x its base)."""
        backoff = self.retry_backoff * ((1 << self.retries) - 1) * 1.5
        return self.poll_timeout * (self.retries + 1) + backoff

    @property
    def effective_lease(self) -> timedelta:
        if self.lease is not None:
            return self.lease
        # The margin covers resolving the target and writing the result.
        return self.longest_poll + max(self.poll_timeout, timedelta(seconds=10))


@attrs.frozen
class ServerSettings:
    """The reference server (``lunasentri serve``)."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=8080, validator=_port)
    """0 asks the system for any free port."""
    public_url: str | None = None
    """How agents reach this server (install commands); default ``http(s)://host:port``."""
    agent_wheels_dir: Path | None = None
    """Wheels of the agent (lunasentri-core and its collector plugins, at the server's
    versions) that new machines install from ``/agent/dist/``; by default the server
    builds them from its own sources."""
    log_format: str = attrs.field(default="text", validator=attrs.validators.in_(("text", "json")))
    cors_origins: tuple[str, ...] = ()
    """Origins whose pages may call the API with the user's credentials (CORS), and may
    also send state-changing requests authenticated by the session cookie."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    hsts_max_age: int = attrs.field(default=31_536_000, validator=_at_least(0))
    """Seconds browsers keep to HTTPS (``Strict-Transport-Security``), sent only on
    responses to HTTPS requests; one year, as OWASP's HTTP headers cheat sheet
    advises; 0 sends no header."""
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
    stream_recheck: timedelta = attrs.field(default=timedelta(seconds=2), validator=_positive)
    """How often an open live stream checks that its credential (session, token) still
    holds and its machine is still visible; it ends within this long of a logout, an
    expiry, a password change or a deleted user, by whichever server process."""
    login_max_failures: int = attrs.field(default=5, validator=_at_least(1))
    """Failed logins within ``login_lockout`` of one username from one client address
    before its logins from there are refused (Grafana's figure)..."""
    login_max_client_failures: int = attrs.field(default=100, validator=_at_least(1))
    """...of any usernames from one client address, refused before hashing (Auth0's)..."""
    login_max_account_failures: int = attrs.field(default=100, validator=_at_least(1))
    """...and of one username from every address."""
    login_lockout: timedelta = timedelta(minutes=15)
    """The window failed logins are counted over."""
    register_rate: float = attrs.field(default=0.2, validator=_at_least(0))
    """Agent registrations per second one client address may make on average (a token
    bucket; 0 turns the limit off)..."""
    register_burst: float = attrs.field(default=20.0, validator=_at_least(1))
    """...and at once."""
    channel_test_rate: float = attrs.field(default=1 / 3, validator=_at_least(0))
    """Channel test sends per second one user may make on average (a token bucket;
    0 turns the limit off): 20 a minute, Telegram's limit for messages to one group..."""
    channel_test_burst: float = attrs.field(default=20.0, validator=_at_least(1))
    """...and at once."""
    metrics_series: bool = False
    """Expose the latest stored value of every machine's series on /metrics (opt-in)."""
    shared_database: bool = False
    """Let several ``lunasentri serve`` processes use one SQLite database (each must set
    it); otherwise a second server on the same file refuses to start."""

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _masked(keys: Mapping[str, str]) -> str:
    # Imported here: the settings load without cryptography until a key is used.
    from lunasentri_core.secretbox import masked_keys

    return masked_keys(keys)


def _secret_keys(_: object, attribute: attrs.Attribute[Any], keys: Mapping[str, str]) -> None:
    from lunasentri_core.secretbox import check_key_id, decode_key

    for key_id, text in keys.items():
        try:
            check_key_id(key_id)
            decode_key(text)
        except ValueError as error:  # the message names the id, never the key
            raise InvalidValue(f"key {key_id!r}: {error}", attribute) from None


@attrs.frozen
class SecretsSettings:
    """Keys of the secret box that encrypts stored credentials (``[secrets]``)."""

    keys: Mapping[str, str] = attrs.field(factory=dict, repr=_masked, validator=_secret_keys)
    """Base64 AES-256 keys by id; every one decrypts. None set: the key file is used."""
    current: str | None = attrs.field(default=None)
    """The id of the key that encrypts; needed when ``keys`` holds more than one."""
    key_file: Path | None = None
    """Where the keys are kept when ``keys`` is empty; default ``<data_dir>/secret.keys``."""
    cache_ttl: timedelta = attrs.field(default=timedelta(minutes=5), validator=_not_negative)
    """How long a decrypted credential stays in memory after use (0: decrypt at every use)."""

    @current.validator
    def _check_current(self, attribute: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None and value not in self.keys:
            raise InvalidValue(f"{value!r} is not one of the ids in secrets.keys", attribute)
        if value is None and len(self.keys) > 1:
            raise InvalidValue("name the key that encrypts: several keys are set", attribute)

    def current_key_id(self) -> str:
        return self.current if self.current is not None else next(iter(self.keys))

    def key_file_path(self, data_dir: Path) -> Path:
        from lunasentri_core.secretbox import KEY_FILE_NAME

        return self.key_file if self.key_file is not None else data_dir / KEY_FILE_NAME


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
    heartbeat_interval: timedelta = attrs.field(default=timedelta(seconds=30), validator=_positive)
    """How often the heartbeat looks for machines gone silent or back."""
    offline_threshold: timedelta = attrs.field(default=timedelta(minutes=2), validator=_positive)
    """Silence after which a machine is offline (a machine's own ``offline_after`` wins)."""
    restart_grace: timedelta = attrs.field(default=timedelta(seconds=30), validator=_not_negative)
    """After a start, a machine not heard from since goes offline only once silent for its
    threshold plus this long: the agents' default ``backoff_max``, so agents that kept
    running through a server outage report again first."""
    sync_interval: timedelta = attrs.field(default=timedelta(seconds=2), validator=_positive)
    """How often the hub looks for alert rules and machines changed by other processes
    sharing its storage."""
    notifications: NotificationSettings = NotificationSettings()
    agentless: AgentlessSettings = AgentlessSettings()
    secrets: SecretsSettings = SecretsSettings()
    admin_username: str = "admin"
    admin_password: str | None = attrs.field(default=None, repr=mask_secret)
    """Creates the first admin at server start when no admin exists yet."""
    disabled_plugins: tuple[str, ...] = ()
    enabled_plugins: tuple[str, ...] | None = None
    """When set, only these plugins load (an allowlist for locked-down deployments)."""
    strict_plugins: bool = False
    """Refuse to start when a ``[plugins.<name>]`` table names no loaded component
    (by default the hub logs a warning and ignores the table)."""
    plugins: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    """Each plugin's own table, structured into its settings class by the plugin manager."""

    @log_level.validator
    def _check_level(self, attribute: attrs.Attribute[str], value: str) -> None:
        if value.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise InvalidValue("expected one of debug, info, warning, error, critical", attribute)

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
        return settings_from_mapping(raw_settings(path, environ, overrides))


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    if "plugins" in data and not isinstance(data["plugins"], Mapping):
        raise ConfigError("invalid settings: plugins: expected a table of [plugins.<name>]")
    try:
        return decode(dict(data), Settings, what="settings")
    except ValidationError as error:
        raise ConfigError(str(error)) from None
