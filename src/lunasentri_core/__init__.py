"""LunaSentri: monitor machines with plugins.

Everything a plugin author or an embedding application needs is importable from
here (and from :mod:`lunasentri_core.testing` for tests); other modules are
implementation details that may change between releases.

Names are imported on first use (PEP 562): ``from lunasentri_core import Reading``
loads the few classes collectors use, not the model, the hub, the codec or anyio.
The push agent relies on that to stay small; see docs/benchmarks.md (agent footprint).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # For type checkers and IDEs; at run time __getattr__ below imports each name.
    from lunasentri_core.components import (
        Authenticator,
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
        InUseError,
        LunaSentriError,
        NotFoundError,
        PluginError,
        SeriesLimitError,
        StorageError,
        StorageUnavailable,
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
        AlertStatus,
        ApiKey,
        AuditEntry,
        Channel,
        ClaimStatus,
        Comparison,
        CredentialProfile,
        Delivery,
        DeliveryState,
        Device,
        DiscoveryProfile,
        DiscoveryRun,
        EventState,
        HistoryColumns,
        HistoryPoint,
        HistoryQuery,
        Machine,
        MachineKind,
        MachineSamples,
        MachineStatus,
        Monitor,
        OutboxEvent,
        PollOutcome,
        ResetToken,
        Resolution,
        RetentionPolicy,
        Role,
        RuleScope,
        RunState,
        SeriesHistory,
        SeriesKey,
        SeriesValue,
        Session,
        Severity,
        Silence,
        StatusChange,
        User,
    )
    from lunasentri_core.remote import (
        HostIdentity,
        Identifier,
        RemoteAuthError,
        RemoteCredential,
        RemoteError,
        RemoteErrorKind,
        RemoteFaultError,
        RemoteRefusedError,
        RemoteTimeoutError,
        RemoteTlsError,
        RemoteUnreachableError,
        Transport,
    )
    from lunasentri_core.samples import Collector, Labels, Reading, ReadingColumns, Sample, Target

    __version__: str

# Public name -> the module that defines it. A new public name goes here, into the
# TYPE_CHECKING imports above (for type checkers) and into __all__ (for them and
# for `import *`); tests/agent/test_agent_imports.py checks the three agree.
_EXPORTS: dict[str, str] = {
    "AgentClaim": "lunasentri_core.model",
    "AgentConfig": "lunasentri_core.model",
    "Aggregation": "lunasentri_core.model",
    "AlertEvent": "lunasentri_core.model",
    "StatusChange": "lunasentri_core.model",
    "Silence": "lunasentri_core.model",
    "OutboxEvent": "lunasentri_core.model",
    "EventState": "lunasentri_core.model",
    "DeliveryState": "lunasentri_core.model",
    "Delivery": "lunasentri_core.model",
    "Channel": "lunasentri_core.model",
    "AlertStatus": "lunasentri_core.model",
    "AlertRule": "lunasentri_core.model",
    "AlertState": "lunasentri_core.model",
    "ApiKey": "lunasentri_core.model",
    "AuditEntry": "lunasentri_core.model",
    "Authenticator": "lunasentri_core.components",
    "ClaimStatus": "lunasentri_core.model",
    "Collector": "lunasentri_core.samples",
    "Comparison": "lunasentri_core.model",
    "ConfigError": "lunasentri_core.errors",
    "ConflictError": "lunasentri_core.errors",
    "Credentials": "lunasentri_core.components",
    "DeliveryResult": "lunasentri_core.components",
    "DeliveryStatus": "lunasentri_core.components",
    "FieldError": "lunasentri_core.errors",
    "HistoryColumns": "lunasentri_core.model",
    "HistoryPoint": "lunasentri_core.model",
    "HistoryQuery": "lunasentri_core.model",
    "Labels": "lunasentri_core.samples",
    "LunaSentriError": "lunasentri_core.errors",
    "Machine": "lunasentri_core.model",
    "MachineKind": "lunasentri_core.model",
    "MachineSamples": "lunasentri_core.model",
    "MachineStatus": "lunasentri_core.model",
    "NotFoundError": "lunasentri_core.errors",
    "Notification": "lunasentri_core.components",
    "NotificationKind": "lunasentri_core.components",
    "Notifier": "lunasentri_core.components",
    "PluginError": "lunasentri_core.errors",
    "Principal": "lunasentri_core.components",
    "Reading": "lunasentri_core.samples",
    "ReadingColumns": "lunasentri_core.samples",
    "ResetToken": "lunasentri_core.model",
    "Resolution": "lunasentri_core.model",
    "RetentionPolicy": "lunasentri_core.model",
    "Role": "lunasentri_core.model",
    "RuleScope": "lunasentri_core.model",
    "Sample": "lunasentri_core.samples",
    "Sentri": "lunasentri_core.hub",
    "SeriesHistory": "lunasentri_core.model",
    "SeriesKey": "lunasentri_core.model",
    "SeriesLimitError": "lunasentri_core.errors",
    "SeriesValue": "lunasentri_core.model",
    "Session": "lunasentri_core.model",
    "Settings": "lunasentri_core.config",
    "Severity": "lunasentri_core.model",
    "StorageError": "lunasentri_core.errors",
    "StorageUnavailable": "lunasentri_core.errors",
    "Target": "lunasentri_core.samples",
    "User": "lunasentri_core.model",
    "ValidationError": "lunasentri_core.errors",
    "HostIdentity": "lunasentri_core.remote",
    "Identifier": "lunasentri_core.remote",
    "RemoteAuthError": "lunasentri_core.remote",
    "RemoteCredential": "lunasentri_core.remote",
    "RemoteError": "lunasentri_core.remote",
    "RemoteErrorKind": "lunasentri_core.remote",
    "RemoteFaultError": "lunasentri_core.remote",
    "RemoteRefusedError": "lunasentri_core.remote",
    "RemoteTimeoutError": "lunasentri_core.remote",
    "RemoteTlsError": "lunasentri_core.remote",
    "RemoteUnreachableError": "lunasentri_core.remote",
    "Transport": "lunasentri_core.remote",
    "CredentialProfile": "lunasentri_core.model",
    "Device": "lunasentri_core.model",
    "DiscoveryProfile": "lunasentri_core.model",
    "DiscoveryRun": "lunasentri_core.model",
    "Monitor": "lunasentri_core.model",
    "PollOutcome": "lunasentri_core.model",
    "RunState": "lunasentri_core.model",
    "InUseError": "lunasentri_core.errors",
    "hookimpl": "lunasentri_core.hookspecs",
}

__all__ = [
    "AgentClaim",
    "AgentConfig",
    "Aggregation",
    "AlertEvent",
    "AlertRule",
    "AlertState",
    "AlertStatus",
    "ApiKey",
    "AuditEntry",
    "Authenticator",
    "Channel",
    "ClaimStatus",
    "Collector",
    "Comparison",
    "ConfigError",
    "ConflictError",
    "CredentialProfile",
    "Credentials",
    "Delivery",
    "DeliveryResult",
    "DeliveryState",
    "DeliveryStatus",
    "Device",
    "DiscoveryProfile",
    "DiscoveryRun",
    "EventState",
    "FieldError",
    "HistoryColumns",
    "HistoryPoint",
    "HistoryQuery",
    "HostIdentity",
    "Identifier",
    "InUseError",
    "Labels",
    "LunaSentriError",
    "Machine",
    "MachineKind",
    "MachineSamples",
    "MachineStatus",
    "Monitor",
    "NotFoundError",
    "Notification",
    "NotificationKind",
    "Notifier",
    "OutboxEvent",
    "PluginError",
    "PollOutcome",
    "Principal",
    "Reading",
    "ReadingColumns",
    "RemoteAuthError",
    "RemoteCredential",
    "RemoteError",
    "RemoteErrorKind",
    "RemoteFaultError",
    "RemoteRefusedError",
    "RemoteTimeoutError",
    "RemoteTlsError",
    "RemoteUnreachableError",
    "ResetToken",
    "Resolution",
    "RetentionPolicy",
    "Role",
    "RuleScope",
    "RunState",
    "Sample",
    "Sentri",
    "SeriesHistory",
    "SeriesKey",
    "SeriesLimitError",
    "SeriesValue",
    "Session",
    "Settings",
    "Severity",
    "Silence",
    "StatusChange",
    "StorageError",
    "StorageUnavailable",
    "Target",
    "Transport",
    "User",
    "ValidationError",
    "__version__",
    "hookimpl",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Cached in the module's namespace: the next lookup never reaches __getattr__.
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lunasentri-core")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"
