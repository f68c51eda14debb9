"""Checking real responses against the server's OpenAPI document.

Shared by test_openapi.py (the conformance run), test_bad_input.py (every refusal
is documented and has the error shape) and test_isolation.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from lunasentri_core.config import Settings

from .conftest import ADMIN_PASSWORD, LiveServer, free_port

DOC_URI = "urn:lunasentri:openapi"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
NO_BODY_STATUSES = (204, 304)


@attrs.frozen(repr=False)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]
    pattern: re.Pattern[str]

    @property
    def id(self) -> str:
        return str(self.spec["operationId"])

    @property
    def public(self) -> bool:
        return "security" not in self.spec

    @property
    def schemes(self) -> set[str]:
        return {name for option in self.spec.get("security", []) for name in option}

    @property
    def for_machines(self) -> bool:
        return self.schemes == {"apiKey"}

    @property
    def has_body(self) -> bool:
        return "requestBody" in self.spec

    @property
    def path_params(self) -> list[str]:
        return [p["name"] for p in self.spec.get("parameters", []) if p["in"] == "path"]

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


class ApiDoc:
    """The OpenAPI document, its operations, and validators for their schemas."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry: Registry[Any] = Registry().with_resource(
            DOC_URI, DRAFT202012.create_resource(document)
        )
        operations = [
            Operation(method.upper(), path, spec, _path_pattern(path))
            for path, item in document["paths"].items()
            for method, spec in item.items()
            if method in METHODS
        ]
        # Literal segments win over parameters (…/agents/pending before …/agents/{id}).
        self.operations = sorted(operations, key=lambda op: op.path.count("{"))

    def find(self, method: str, path: str) -> Operation | None:
        method = "GET" if method == "HEAD" else method
        for operation in self.operations:
            if operation.method == method and operation.pattern.fullmatch(path):
                return operation
        return None

    def by_id(self, operation_id: str) -> Operation:
        return next(op for op in self.operations if op.id == operation_id)

    def validator(self, *pointer: str) -> Draft202012Validator:
        """A validator for the schema at ``pointer`` in the document ($refs resolved)."""
        return Draft202012Validator(
            {"$ref": DOC_URI + "#" + _pointer(*pointer)},
            registry=self.registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )

    def request_schema(self, operation: Operation) -> dict[str, Any]:
        schema = operation.spec["requestBody"]["content"]["application/json"]["schema"]
        return self.deref(schema)

    def deref(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            name = schema["$ref"].removeprefix("#/components/schemas/")
            schema = self.document["components"]["schemas"][name]
        return schema

    def request_validator(self, operation: Operation) -> Draft202012Validator:
        return self.validator(
            "paths",
            operation.path,
            operation.method.lower(),
            "requestBody",
            "content",
            "application/json",
            "schema",
        )

    def check(self, response: httpx.Response, *, streamed: bool = False) -> list[str]:
        """What in this response the document does not describe (empty: it conforms)."""
        request = response.request
        where = f"{request.method} {request.url.path} -> {response.status_code}"
        operation = self.find(request.method, request.url.path)
        if operation is None:
            return self._check_unrouted(where, response)
        documented = operation.spec["responses"].get(str(response.status_code))
        if documented is None:
            return [f"{where}: status not documented for {operation.id}"]
        if streamed:
            return self._check_media(where, operation, documented, response)
        content = documented.get("content")
        if content is None:
            if response.content:
                return [f"{where}: documented without a body, got {response.content[:80]!r}"]
            return []
        problems = self._check_media(where, operation, documented, response)
        if problems or "application/json" not in content:
            return problems
        try:
            body = json.loads(response.content)
        except ValueError:
            return [f"{where}: body is not JSON: {response.content[:80]!r}"]
        validator = self.validator(
            "paths",
            operation.path,
            operation.method.lower(),
            "responses",
            str(response.status_code),
            "content",
            "application/json",
            "schema",
        )
        return [
            f"{where}: {'/'.join(map(str, error.absolute_path)) or '<body>'}: {error.message}"
            for error in validator.iter_errors(body)
        ]

    def _check_unrouted(self, where: str, response: httpx.Response) -> list[str]:
        """No route: still a 404 or 405 with the error shape."""
        if response.status_code not in (404, 405):
            return [f"{where}: no documented operation"]
        validator = self.validator("components", "schemas", "Error")
        return [f"{where}: {error.message}" for error in validator.iter_errors(response.json())]

    def _check_media(
        self,
        where: str,
        operation: Operation,
        documented: dict[str, Any],
        response: httpx.Response,
    ) -> list[str]:
        content = documented.get("content") or {}
        got = response.headers.get("content-type", "").split(";")[0].strip()
        if got not in content:
            return [f"{where}: content type {got!r}, documented {sorted(content)}"]
        return []


def _path_pattern(path: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\{[A-Za-z_][A-Za-z0-9_]*\\}", "[^/]+", re.escape(path)))


def is_stream(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


class Http:
    """One reused client for many callers (a new httpx client costs ~40 ms: its TLS setup).

    Every request names its own credentials; cookies a response sets are not kept.
    """

    def __init__(self, server: LiveServer, *hooks: Callable[[httpx.Response], None]) -> None:
        self.client = httpx.Client(
            base_url=server.url, timeout=30, event_hooks={"response": list(hooks)}
        )

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """The response, read unless it is an event stream (which would never end)."""
        with self.stream(method, path, token, headers=headers, cookies=cookies, **kwargs) as r:
            if not is_stream(r):
                r.read()
        return r

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Iterator[httpx.Response]:
        sent = dict(headers or {})
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        if cookies:
            sent["cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
        self.client.cookies.clear()
        with self.client.stream(method, path, headers=sent, **kwargs) as response:
            yield response


@attrs.define
class Recorder:
    """An httpx response hook keeping every response it sees."""

    responses: list[tuple[httpx.Response, bool]] = attrs.Factory(list)

    def __call__(self, response: httpx.Response) -> None:
        streamed = is_stream(response)
        if not streamed:
            response.read()
        self.responses.append((response, streamed))


def start_server(
    data_dir: Path,
    *,
    plugins: Mapping[str, object] | None = None,
    overrides: Mapping[str, Any] | None = None,
    **server: Any,
) -> LiveServer:
    """A live server outside the function-scoped fixtures (for module-scoped use).

    ``server`` goes to the ``[server]`` settings, ``overrides`` to the top level.
    """
    port = free_port()
    settings = Settings.load(
        environ={},
        data_dir=data_dir,
        admin_password=ADMIN_PASSWORD,
        server={"host": "127.0.0.1", "port": port, **server},
        **(overrides or {}),
    )
    live = LiveServer(settings, port=port, plugins=plugins or {})
    live.start()
    _no_delay(live)
    return live


def _no_delay(live: LiveServer) -> None:
    # The fixture binds its socket without IPPROTO_TCP, so asyncio does not set
    # TCP_NODELAY on accepted connections and every response whose headers and body
    # go out in two writes waits ~40 ms for a delayed ACK. Linux copies the option
    # from the listening socket to the ones it accepts.
    assert live._server is not None
    for server in live._server.servers:
        for sock in server.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def running(
    data_dir: Path,
    *,
    plugins: Mapping[str, object] | None = None,
    overrides: Mapping[str, Any] | None = None,
    **server: Any,
) -> Iterator[LiveServer]:
    live = start_server(data_dir, plugins=plugins, overrides=overrides, **server)
    try:
        yield live
    finally:
        live.stop()


def fetch_document(server: LiveServer) -> dict[str, Any]:
    with server.client() as client:
        response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document
