"""LunaSentri: monitor machines with plugins.

Everything a plugin author or an embedding application needs is importable from
here (and from :mod:`lunasentri_core.testing` for tests); other modules are
implementation details that may change between releases.
"""

from importlib.metadata import PackageNotFoundError, version

from lunasentri_core.components import (
    Authenticator,
    Collector,
    Credentials,
    DeliveryResult,
    DeliveryStatus,
    Notification,
    NotificationKind,
    Notifier,
    Principal,
)
from lunasentri_core.config import Settings
from lunasentri_core.errors import (
    ConfigError,
    ConflictError,
    FieldError,
    LunaSentriError,
    NotFoundError,
    PluginError,
    StorageError,
    ValidationError,
)
from lunasentri_core.hookspecs import hookimpl
from lunasentri_core.hub import Sentri
from lunasentri_core.model import (
    AgentClaim,
    AgentConfig,
    Aggregation,
    AlertEvent,
    AlertRule,
    AlertState,
    ApiKey,
    AuditEntry,
    ClaimStatus,
    Comparison,
    HistoryPoint,
    HistoryQuery,
    Labels,
    Machine,
    MachineKind,
    MachineSamples,
    MachineStatus,
    Reading,
    ResetToken,
    Resolution,
    RetentionPolicy,
    Role,
    RuleScope,
    Sample,
    SeriesHistory,
    SeriesKey,
    SeriesValue,
    Session,
    Severity,
    Target,
    User,
)

try:
    __version__ = version("lunasentri-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AgentClaim",
    "AgentConfig",
    "Aggregation",
    "AlertEvent",
    "AlertRule",
    "AlertState",
    "ApiKey",
    "AuditEntry",
    "Authenticator",
    "ClaimStatus",
    "Collector",
    "Comparison",
    "ConfigError",
    "ConflictError",
    "Credentials",
    "DeliveryResult",
    "DeliveryStatus",
    "FieldError",
    "HistoryPoint",
    "HistoryQuery",
    "Labels",
    "LunaSentriError",
    "Machine",
    "MachineKind",
    "MachineSamples",
    "MachineStatus",
    "NotFoundError",
    "Notification",
    "NotificationKind",
    "Notifier",
    "PluginError",
    "Principal",
    "Reading",
    "ResetToken",
    "Resolution",
    "RetentionPolicy",
    "Role",
    "RuleScope",
    "Sample",
    "Sentri",
    "SeriesHistory",
    "SeriesKey",
    "SeriesValue",
    "Session",
    "Settings",
    "Severity",
    "StorageError",
    "Target",
    "User",
    "ValidationError",
    "__version__",
    "hookimpl",
]
