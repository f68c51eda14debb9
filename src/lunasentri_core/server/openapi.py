"""The OpenAPI 3.1 document, generated from the endpoint declarations."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from lunasentri_core.server.api import Api, Auth, Endpoint, Schema, ref

_PATH_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::[a-z]+)?}")

ERROR_SCHEMA: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
                "in_use_by": {
                    "type": "object",
                    "description": "With code in_use: the ids of what uses the record, by kind.",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
        }
    },
}

_SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    Auth.USER: [{"session": []}, {"sessionCookie": []}],
    Auth.ADMIN: [{"session": []}, {"sessionCookie": []}],
    Auth.MACHINE: [{"apiKey": []}],
}


def openapi_document(apis: Sequence[Api], version: str) -> dict[str, Any]:
    schemas: dict[str, Schema] = {"Error": ERROR_SCHEMA}
    for api in apis:
        schemas.update(api.schemas)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in (e for api in apis for e in api.endpoints):
        path = _PATH_PARAM.sub(r"{\1}", endpoint.path)
        paths.setdefault(path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LunaSentri API",
            "version": version,
            "description": "The reference server of LunaSentri. Errors share one shape: "
            '`{"error": {"code", "message", "field"}}`.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "session": {"type": "http", "scheme": "bearer", "description": "lss_… token"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "lunasentri_session"},
                "apiKey": {"type": "http", "scheme": "bearer", "description": "lsk_… API key"},
            },
        },
    }


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "tags": list(endpoint.tags),
        "parameters": [*_path_parameters(endpoint.path), *_query_parameters(endpoint.query)],
        "responses": _responses(endpoint),
    }
    if endpoint.handler.__doc__:
        operation["description"] = endpoint.handler.__doc__.strip()
    if endpoint.auth in _SECURITY:
        operation["security"] = _SECURITY[endpoint.auth]
    if endpoint.request is not None:
        operation["requestBody"] = {
            "required": endpoint.request_required,
            "content": {"application/json": {"schema": endpoint.request}},
        }
    return operation


def _path_parameters(path: str) -> Iterable[dict[str, Any]]:
    for name in _PATH_PARAM.findall(path):
        yield {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query_parameters(query: Mapping[str, Schema]) -> Iterable[dict[str, Any]]:
    for name, schema in query.items():
        required = bool(schema.get("x-required", False))
        clean = {k: v for k, v in schema.items() if k != "x-required"}
        yield {"name": name, "in": "query", "required": required, "schema": clean}


def _responses(endpoint: Endpoint) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, schema in endpoint.responses.items():
        responses[str(status)] = _response(status, schema)
    for status in _implied_errors(endpoint):
        responses.setdefault(str(status), _response(status, ref("Error")))
    return responses


def _implied_errors(endpoint: Endpoint) -> list[int]:
    statuses = []
    if endpoint.auth is not Auth.PUBLIC:
        statuses += [401, 403]
    elif endpoint.method not in ("GET", "HEAD"):
        # CrossSiteGuard refuses a state-changing request from another site's page.
        statuses.append(403)
    if endpoint.request is not None or endpoint.query or "{" in endpoint.path:
        statuses += [400, 404, 413, 422]
    if endpoint.request is not None:
        # Call.body refuses a body that is not JSON, or a Content-Encoding other than
        # identity or gzip.
        statuses.append(415)
    return statuses


def _response(status: int, schema: Schema | None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
    if schema is not None:
        media = schema.get("contentMediaType") or (
            "text/plain" if schema.get("type") == "string" else "application/json"
        )
        response["content"] = {media: {"schema": schema}}
    return response
