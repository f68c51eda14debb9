"""Routes: the plugins the server loaded, and those that failed (admins only)."""

from __future__ import annotations

from typing import Any

from lunasentri_core.plugins import PluginFailure, PluginInfo
from lunasentri_core.server.api import Api, Auth, Call, array_of
from lunasentri_core.server.routes.users import object_schema

api = Api("plugins")

_STRINGS = array_of({"type": "string"})
_OPTIONAL_STRING = {"type": ["string", "null"]}

PLUGIN = api.schema(
    "Plugin",
    object_schema(
        {
            "name": {"type": "string", "description": "Entry-point (or registration) name"},
            "distribution": _OPTIONAL_STRING,
            "version": _OPTIONAL_STRING,
            "hooks": _STRINGS,
            "components": {**_STRINGS, "description": "kind:name, e.g. collector:psutil"},
        }
    ),
)

PLUGIN_FAILURE = api.schema(
    "PluginFailure",
    object_schema(
        {
            "name": {"type": "string"},
            "stage": {
                "type": "string",
                "description": "import, missing-dependency, validate, register or settings",
            },
            "reason": {"type": "string"},
            "distribution": _OPTIONAL_STRING,
        }
    ),
)

PLUGINS_REPORT = object_schema(
    {
        "plugins": array_of(PLUGIN),
        "failures": array_of(PLUGIN_FAILURE),
        "disabled": {**_STRINGS, "description": "Found, but turned off by the settings"},
        "stray_settings": {
            **_STRINGS,
            "description": "[plugins.<name>] tables that name no loaded component",
        },
    }
)


@api.get(
    "/api/v1/plugins",
    auth=Auth.ADMIN,
    summary="The loaded plugins, those that failed to load and why",
    responses={200: PLUGINS_REPORT},
)
async def list_plugins(call: Call) -> object:
    manager = call.hub.plugins
    return {
        "plugins": [plugin_json(info) for info in manager.infos()],
        "failures": [failure_json(failure) for failure in manager.failures],
        "disabled": manager.disabled(),
        "stray_settings": manager.stray_settings(),
    }


def plugin_json(info: PluginInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "distribution": info.distribution,
        "version": info.version,
        "hooks": list(info.hooks),
        "components": list(info.components),
    }


def failure_json(failure: PluginFailure) -> dict[str, Any]:
    return {
        "name": failure.name,
        "stage": failure.stage,
        "reason": failure.reason,
        "distribution": failure.distribution,
    }
