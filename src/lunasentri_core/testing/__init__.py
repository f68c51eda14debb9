"""The test kit for plugin authors: contract suites, fixtures and builders.

Enable the fixtures in your ``conftest.py``::

    pytest_plugins = ["lunasentri_core.testing"]

then subclass the contract of what your plugin provides::

    from lunasentri_core.testing import CollectorContract

    class TestMyCollector(CollectorContract):
        @pytest.fixture
        def collector(self):
            return MyCollector(MySettings())

Fixtures: ``lunasentri_plugin_manager`` (an isolated plugin manager without
entry points), ``register_plugin`` (registers a plugin object for one test),
``hook_recorder`` (a :class:`HookRecorder` registered on that manager) and
``silent_server`` (a loopback host that never answers, for timeout checks).

The kit needs pytest; ``import lunasentri_core`` never imports it. (This module
is marked PYTEST_DONT_REWRITE: it holds no asserts, while its submodules are
registered for assertion rewriting before they are imported.)
"""

import pytest

pytest.register_assert_rewrite(
    "lunasentri_core.testing.assertions",
    "lunasentri_core.testing.authenticator",
    "lunasentri_core.testing.collector",
    "lunasentri_core.testing.constant_time",
    "lunasentri_core.testing.entry_point",
    "lunasentri_core.testing.notifier",
    "lunasentri_core.testing.secret_fields",
    "lunasentri_core.testing.storage",
    "lunasentri_core.testing.storage_agentless",
    "lunasentri_core.testing.storage_alerting",
    "lunasentri_core.testing.storage_metrics",
    "lunasentri_core.testing.storage_outbox",
    "lunasentri_core.testing.storage_purge",
    "lunasentri_core.testing.storage_state",
)

# ruff: noqa: E402 - the imports must follow the registration above
from lunasentri_core.plugins import PluginManager, create_plugin_manager
from lunasentri_core.testing.aio import LOOP_LAG_LIMIT, LoopWatch, resolve, watch_the_loop
from lunasentri_core.testing.assertions import assert_history_equal, assert_latest_equal
from lunasentri_core.testing.authenticator import (
    AuthenticatorContract,
    check_principal,
    presented_secrets,
)
from lunasentri_core.testing.builders import (
    BASE_TIME,
    hash_secret,
    make_alert_event,
    make_alert_rule,
    make_alert_status,
    make_api_key,
    make_channel,
    make_credential_profile,
    make_credentials,
    make_device,
    make_discovery_profile,
    make_machine,
    make_monitor,
    make_notification,
    make_outbox_event,
    make_reading,
    make_sample,
    make_samples,
    make_series,
    make_silence,
    make_status_change,
    make_target,
    make_user,
)
from lunasentri_core.testing.collector import CollectorContract, check_readings
from lunasentri_core.testing.constant_time import Comparisons, presented, watch_compare_digest
from lunasentri_core.testing.contract import Contract
from lunasentri_core.testing.entry_point import EntryPointContract
from lunasentri_core.testing.notifier import NotifierContract, ReceivedMessage
from lunasentri_core.testing.plugin import (
    RegisterPlugin,
    hook_recorder,
    lunasentri_plugin_manager,
    register_plugin,
    silent_server,
)
from lunasentri_core.testing.recorder import EVENT_HOOKS, HookRecorder, RecordedCall, make_plugin
from lunasentri_core.testing.reference import (
    StoredPoint,
    points_of,
    reference_history,
    reference_latest,
)
from lunasentri_core.testing.secret_fields import (
    check_secret_fields,
    looks_secret,
    secret_fields,
    secret_values,
)
from lunasentri_core.testing.settings import (
    InvalidConfig,
    check_refuses_invalid_configs,
    decode_settings,
    invalid_configs,
)
from lunasentri_core.testing.storage import StorageContract
from lunasentri_core.testing.storage_agentless import AgentlessStoreContract
from lunasentri_core.testing.storage_metrics import MetricStoreContract, history_batch, require
from lunasentri_core.testing.storage_state import StateStoreContract
from lunasentri_core.testing.wsman import (
    CommandHandler,
    CommandResult,
    ShellCommand,
    WsmanFault,
    WsmanServer,
    wsman_server,
)
from lunasentri_core.testing.wsman_data import WmiRepository

__all__ = [
    "BASE_TIME",
    "EVENT_HOOKS",
    "LOOP_LAG_LIMIT",
    "AgentlessStoreContract",
    "AuthenticatorContract",
    "CollectorContract",
    "CommandHandler",
    "CommandResult",
    "Comparisons",
    "Contract",
    "EntryPointContract",
    "HookRecorder",
    "InvalidConfig",
    "LoopWatch",
    "MetricStoreContract",
    "NotifierContract",
    "PluginManager",
    "ReceivedMessage",
    "RecordedCall",
    "RegisterPlugin",
    "ShellCommand",
    "StateStoreContract",
    "StorageContract",
    "StoredPoint",
    "WmiRepository",
    "WsmanFault",
    "WsmanServer",
    "assert_history_equal",
    "assert_latest_equal",
    "check_principal",
    "check_readings",
    "check_refuses_invalid_configs",
    "check_secret_fields",
    "create_plugin_manager",
    "decode_settings",
    "hash_secret",
    "history_batch",
    "hook_recorder",
    "invalid_configs",
    "looks_secret",
    "lunasentri_plugin_manager",
    "make_alert_event",
    "make_alert_rule",
    "make_alert_status",
    "make_api_key",
    "make_channel",
    "make_credential_profile",
    "make_credentials",
    "make_device",
    "make_discovery_profile",
    "make_machine",
    "make_monitor",
    "make_notification",
    "make_outbox_event",
    "make_plugin",
    "make_reading",
    "make_sample",
    "make_samples",
    "make_series",
    "make_silence",
    "make_status_change",
    "make_target",
    "make_user",
    "points_of",
    "presented",
    "presented_secrets",
    "reference_history",
    "reference_latest",
    "register_plugin",
    "require",
    "resolve",
    "secret_fields",
    "secret_values",
    "silent_server",
    "watch_compare_digest",
    "watch_the_loop",
    "wsman_server",
]
