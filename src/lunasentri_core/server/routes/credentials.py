"""Routes: credential profiles (how the server logs in to Windows hosts) and the
collector plugins agentless monitoring can use."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
from starlette.responses import Response

from lunasentri_core.codec import decode
from lunasentri_core.errors import FieldError, ValidationError
from lunasentri_core.model import CredentialProfile
from lunasentri_core.remote import Transport
from lunasentri_core.server.api import Api, Auth, Call, Schema, items_of, ref
from lunasentri_core.server.routes.machines import NAME, json_object
from lunasentri_core.server.routes.users import object_schema
from lunasentri_core.services.credentials import (
    CredentialProfiles,
    ProfileFields,
    TestOutcome,
    collector_names,
    identifier_names,
)
from lunasentri_core.services.hosts import check_host

api = Api("agentless")

MAX_PASSWORD = 1024
MAX_PATH = 4096
MAX_TEST_TIMEOUT = 120.0
DEFAULT_TEST_TIMEOUT = 30.0
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
MAYBE_STRING: Schema = {"type": ["string", "null"], "maxLength": 256}
MAYBE_PATH: Schema = {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_PATH}
PORT: Schema = {"type": ["integer", "null"], "minimum": 1, "maximum": 65535}
TRANSPORT: Schema = {"type": "string", "enum": [t.value for t in Transport]}
HOST: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 253,
    "pattern": r"^[A-Za-z0-9._:%-]+$",
    "description": "A host name or an IPv4/IPv6 address.",
}
COLLECTOR: Schema = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,63}$"}

_FIELDS: dict[str, Schema] = {
    "name": NAME,
    "transport": {**TRANSPORT, "description": "Default ntlm."},
    "username": {**MAYBE_STRING, "description": "Needed by every transport but certificate."},
    "domain": {**MAYBE_STRING, "description": "Sent as DOMAIN\\username."},
    "https": {"type": "boolean", "description": "Default true (port 5986; false: 5985)."},
    "port": PORT,
    "verify_tls": {"type": "boolean", "description": "Check the host's certificate; default true."},
    "ca_path": {**MAYBE_PATH, "description": "A CA bundle on the server to check it against."},
    "cert_path": {**MAYBE_PATH, "description": "Client certificate (certificate transport)."},
    "key_path": {**MAYBE_PATH, "description": "Its private key (certificate transport)."},
}
_PASSWORD: Schema = {
    "type": ["string", "null"],
    "maxLength": MAX_PASSWORD,
    "description": "Stored encrypted; never returned.",
}

PROFILE = api.schema(
    "CredentialProfile",
    object_schema(
        {
            "id": {"type": "string"},
            "owner_id": {"type": "string"},
            "name": {"type": "string"},
            "transport": TRANSPORT,
            "username": {"type": ["string", "null"]},
            "domain": {"type": ["string", "null"]},
            "https": {"type": "boolean"},
            "port": {"type": "integer", "description": "The port used (default filled in)."},
            "verify_tls": {"type": "boolean"},
            "ca_path": {"type": ["string", "null"]},
            "cert_path": {"type": ["string", "null"]},
            "key_path": {"type": ["string", "null"]},
            "has_password": {"type": "boolean"},
            "version": {"type": "integer", "description": "Grows with every change."},
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
        }
    ),
)
CREATE_REQUEST: Schema = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {**_FIELDS, "password": _PASSWORD},
}
PATCH_REQUEST: Schema = {
    "type": "object",
    "required": [],
    "additionalProperties": False,
    "properties": {
        **_FIELDS,
        "password": {**_PASSWORD, "description": "A new password; null removes it."},
    },
}
TEST_REQUEST: Schema = object_schema(
    {
        "host": HOST,
        "collector": {**COLLECTOR, "description": "The plugin that logs in; default wmi."},
        "timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": MAX_TEST_TIMEOUT,
            "description": f"Seconds; default {DEFAULT_TEST_TIMEOUT:g}.",
        },
    },
    optional=("collector", "timeout"),
)
TEST_RESULT = api.schema(
    "CredentialTest",
    object_schema(
        {
            "ok": {"type": "boolean"},
            "host": {"type": "string"},
            "collector": {"type": "string"},
            "elapsed": {"type": "number", "description": "Seconds."},
            "hostname": {"type": ["string", "null"]},
            "os": {"type": ["string", "null"]},
            "os_version": {"type": ["string", "null"]},
            "error": {
                "type": ["object", "null"],
                "required": ["kind", "message"],
                "properties": {
                    "kind": {
                        "type": "string",
                        "description": "authentication, refused, timeout, tls, fault, "
                        "unreachable, protocol or configuration (e.g. a transport's "
                        "library is not installed).",
                    },
                    "message": {"type": "string"},
                },
            },
        }
    ),
)
COLLECTORS = api.schema(
    "CollectorPlugin",
    object_schema(
        {
            "name": {"type": "string"},
            "identifies": {
                "type": "boolean",
                "description": "Whether it can identify hosts (credential tests, discovery).",
            },
        }
    ),
)


@attrs.frozen
class ProfileBody:
    name: str
    transport: Transport = Transport.NTLM
    username: str | None = None
    domain: str | None = None
    https: bool = True
    port: int | None = None
    verify_tls: bool = True
    ca_path: str | None = None
    cert_path: str | None = None
    key_path: str | None = None
    password: str | None = None


@attrs.frozen
class ProfilePatch:
    name: str | None = None
    transport: Transport | None = None
    username: str | None = None
    domain: str | None = None
    https: bool | None = None
    port: int | None = None
    verify_tls: bool | None = None
    ca_path: str | None = None
    cert_path: str | None = None
    key_path: str | None = None
    password: str | None = None


@attrs.frozen
class TestBody:
    __test__ = False

    host: str
    collector: str = "wmi"
    timeout: float = DEFAULT_TEST_TIMEOUT


_NOT_NULL = ("name", "transport", "https", "verify_tls")


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError([FieldError(field, message)], "request body")


def _check_lengths(body: ProfileBody | ProfilePatch) -> None:
    if body.password is not None and len(body.password) > MAX_PASSWORD:
        raise _invalid("password", f"must be at most {MAX_PASSWORD} characters")
    for name in ("ca_path", "cert_path", "key_path"):
        value = getattr(body, name)
        if value is not None and not 0 < len(value) <= MAX_PATH:
            raise _invalid(name, f"must be 1 to {MAX_PATH} characters")


def profile_json(profile: CredentialProfile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "owner_id": profile.owner_id,
        "name": profile.name,
        "transport": profile.transport.value,
        "username": profile.username,
        "domain": profile.domain,
        "https": profile.https,
        "port": profile.credential(None).effective_port,
        "verify_tls": profile.verify_tls,
        "ca_path": profile.ca_path,
        "cert_path": profile.cert_path,
        "key_path": profile.key_path,
        "has_password": profile.has_password,
        "version": profile.version,
        "created_at": profile.created_at.isoformat(),
        "updated_at": profile.updated_at.isoformat(),
    }


def _test_json(outcome: TestOutcome, body: TestBody) -> dict[str, Any]:
    identity = outcome.identity
    return {
        "ok": outcome.ok,
        "host": body.host,
        "collector": body.collector,
        "elapsed": round(outcome.elapsed, 3),
        "hostname": identity.hostname if identity else None,
        "os": identity.os if identity else None,
        "os_version": identity.os_version if identity else None,
        "error": (
            {"kind": outcome.error_kind, "message": outcome.message}
            if outcome.error is not None
            else None
        ),
    }


@api.post(
    "/api/v1/credential-profiles",
    auth=Auth.USER,
    summary="Create a credential profile (the password is stored encrypted)",
    request=CREATE_REQUEST,
    responses={201: PROFILE, 409: ref("Error")},
    status=201,
)
async def create_credential_profile(call: Call) -> object:
    """Every transport but `certificate` needs a `username`; `basic`, `ntlm` and
    `credssp` need a `password` (`kerberos` may use a ticket the server holds). The
    `certificate` transport works over HTTPS only and needs `cert_path` and
    `key_path`. The password is never returned: `has_password` says one is set."""
    body = await call.json(ProfileBody)
    _check_lengths(body)
    fields = ProfileFields(**{f.name: getattr(body, f.name) for f in attrs.fields(ProfileFields)})
    profile = await CredentialProfiles(call.hub).create(
        call.user, fields, body.password, client=call.client
    )
    return profile_json(profile)


@api.get(
    "/api/v1/credential-profiles",
    auth=Auth.USER,
    summary="The caller's credential profiles",
    responses={200: items_of(PROFILE)},
)
async def list_credential_profiles(call: Call) -> object:
    """An administrator sees every profile."""
    profiles = await CredentialProfiles(call.hub).all(call.user)
    return {"items": [profile_json(p) for p in profiles]}


@api.get(
    "/api/v1/credential-profiles/{profile_id}",
    auth=Auth.USER,
    summary="Get a credential profile (never its password)",
    responses={200: PROFILE},
)
async def get_credential_profile(call: Call) -> object:
    return profile_json(await CredentialProfiles(call.hub).get(call.user, call.path("profile_id")))


@api.patch(
    "/api/v1/credential-profiles/{profile_id}",
    auth=Auth.USER,
    summary="Change a credential profile",
    request=PATCH_REQUEST,
    responses={200: PROFILE, 409: ref("Error")},
)
async def update_credential_profile(call: Call) -> object:
    """Only the fields given change. A `password` replaces the stored one, `null`
    removes it, leaving it out keeps it. Every change raises `version`, and pollers
    in every server process use the new values from their next poll on."""
    data = await json_object(call)
    body = decode(data, ProfilePatch, what="request body")
    _check_lengths(body)
    for name in _NOT_NULL:
        if name in data and data[name] is None:
            raise _invalid(name, "must not be null")
    changes = {name: getattr(body, name) for name in data if name != "password"}
    profile = await CredentialProfiles(call.hub).update(
        call.user,
        call.path("profile_id"),
        changes,
        body.password,
        clear_password="password" in data and data["password"] is None,
        client=call.client,
    )
    return profile_json(profile)


@api.delete(
    "/api/v1/credential-profiles/{profile_id}",
    auth=Auth.USER,
    summary="Delete a credential profile no monitor or discovery profile uses",
    responses={204: None, 409: ref("Error")},
    status=204,
)
async def delete_credential_profile(call: Call) -> object:
    """While monitors or discovery profiles use it, the answer is 409 with code
    `in_use`, and `in_use_by` lists their ids by kind."""
    await CredentialProfiles(call.hub).delete(
        call.user, call.path("profile_id"), client=call.client
    )
    return Response(status_code=204)


@api.post(
    "/api/v1/credential-profiles/{profile_id}/test",
    auth=Auth.USER,
    summary="Try a credential profile against one host and say what happened",
    request=TEST_REQUEST,
    responses={200: TEST_RESULT},
)
async def test_credential_profile(call: Call) -> object:
    """Logs in to `host` through the `collector` plugin (`wmi` by default, see
    `GET /api/v1/collectors`) and asks the host's name and operating system. The
    answer is 200 whatever happened: `ok`, or the `error` with its `kind`
    (`authentication`, `refused`, `timeout`, `tls`, `fault`, `unreachable`,
    `protocol`) and message."""
    body = await call.json(TestBody)
    check_host(body.host, "host")
    if not 0 < body.timeout <= MAX_TEST_TIMEOUT:
        raise _invalid("timeout", f"must be above 0 and at most {MAX_TEST_TIMEOUT:g} seconds")
    outcome = await CredentialProfiles(call.hub).test(
        call.user,
        call.path("profile_id"),
        body.host,
        collector=body.collector,
        timeout=timedelta(seconds=body.timeout),
        client=call.client,
    )
    return _test_json(outcome, body)


@api.get(
    "/api/v1/collectors",
    auth=Auth.USER,
    summary="The collector plugins monitors can use",
    responses={200: items_of(COLLECTORS)},
)
async def list_collectors(call: Call) -> object:
    identifying = set(identifier_names(call.hub))
    return {
        "items": [
            {"name": name, "identifies": name in identifying} for name in collector_names(call.hub)
        ]
    }
