"""Declaring endpoints once: the same declaration makes the route and its OpenAPI entry.

A route module builds its endpoints on an :class:`Api`::

    api = Api()

    @api.get("/api/v1/machines/{machine_id}", auth=Auth.USER, summary="Get a machine",
             responses={200: ref("Machine")})
    async def get_machine(call: Call) -> object:
        return await call.hub.get_machine(call.path("machine_id"), call.owner_scope)

The handler receives a :class:`Call` (request, hub, authenticated principal) and
returns a JSON-ready value, or a Starlette ``Response`` for anything else. Because
the OpenAPI document is generated from these declarations, a route cannot exist
without being documented.
"""

from __future__ import annotations

import enum
import gzip
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lunasentri_core.codec import decode
from lunasentri_core.components import Principal
from lunasentri_core.errors import FieldError, ValidationError
from lunasentri_core.server.errors import ApiError
from lunasentri_core.server.jsonanswer import JsonAnswer
from lunasentri_core.server.jsonbody import load_json

if TYPE_CHECKING:
    from lunasentri_core.config import ServerSettings
    from lunasentri_core.hub import Sentri

T = TypeVar("T")
Handler = Callable[["Call"], Awaitable[object]]
Schema = dict[str, Any]


class Auth(enum.StrEnum):
    """Who may call an endpoint."""

    PUBLIC = "public"
    USER = "user"
    """Any logged-in user (session or user token)."""
    ADMIN = "admin"
    MACHINE = "machine"
    """An agent presenting its machine's API key."""


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def array_of(schema: Schema) -> Schema:
    return {"type": "array", "items": schema}


def items_of(schema: Schema) -> Schema:
    """The shape every list endpoint answers with: ``{"items": [...]}``."""
    return {"type": "object", "required": ["items"], "properties": {"items": array_of(schema)}}


@attrs.frozen
class Endpoint:
    method: str
    path: str
    handler: Handler
    auth: Auth
    summary: str
    tags: tuple[str, ...]
    request: Schema | None
    request_required: bool
    """Whether the body is required; ``False`` where an empty body means the defaults."""
    responses: Mapping[int, Schema | None]
    query: Mapping[str, Schema]
    """Query parameters and their schemas (documented; parsing is the handler's)."""
    status: int

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


@attrs.define
class Call:
    """One request to an endpoint, already authenticated."""

    request: Request
    hub: Sentri
    settings: ServerSettings
    principal: Principal | None

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])

    @property
    def user(self) -> Principal:
        if self.principal is None or self.principal.kind != "user":
            raise ApiError(401, "unauthenticated", "log in first")
        return self.principal

    @property
    def machine_id(self) -> str:
        if self.principal is None or self.principal.machine_id is None:
            raise ApiError(401, "unauthenticated", "a machine API key is required")
        return self.principal.machine_id

    @property
    def owner_scope(self) -> str | None:
        """The owner whose records this caller may see: ``None`` (all) for an admin."""
        user = self.user
        return None if user.is_admin else user.id

    @property
    def client(self) -> str | None:
        return self.request.client.host if self.request.client else None

    async def body(self, max_bytes: int | None = None) -> bytes:
        """The JSON request body, gunzipped when sent with ``Content-Encoding: gzip``.

        A body that does not say it is JSON is refused (415): the content types an
        HTML form can send (``text/plain`` among them) are how another site's page
        would post to this API without a CORS preflight.
        """
        limit = max_bytes or self.settings.max_body_bytes
        raw = await _read_limited(self.request, limit)
        if raw:
            _require_json(self.request.headers.get("content-type"))
        encoding = self.request.headers.get("content-encoding", "identity").lower()
        if encoding == "gzip":
            return _gunzip(raw, limit)
        if encoding not in ("identity", ""):
            raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r}")
        return raw

    async def json(self, cls: type[T], *, max_bytes: int | None = None) -> T:
        """Decode the JSON body into ``cls``; any problem is a 422 naming the field."""
        return parse_json(await self.body(max_bytes), cls)

    def query(self, name: str, default: str | None = None) -> str | None:
        return self.request.query_params.get(name, default)

    def require_query(self, name: str) -> str:
        value = self.request.query_params.get(name)
        if value is None or value == "":
            raise ApiError(422, "invalid", f"query parameter {name!r} is required", name)
        return value


class Api:
    """A collection of endpoints (one per module of routes)."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag
        self.endpoints: list[Endpoint] = []
        self.schemas: dict[str, Schema] = {}

    def schema(self, name: str, schema: Schema) -> Schema:
        """Declare a named schema (under ``components/schemas``); returns a ``$ref`` to it."""
        self.schemas[name] = schema
        return ref(name)

    def route(
        self,
        method: str,
        path: str,
        *,
        auth: Auth,
        summary: str,
        request: Schema | None = None,
        request_required: bool = True,
        responses: Mapping[int, Schema | None] | None = None,
        query: Mapping[str, Schema] | None = None,
        status: int = 200,
        tags: Sequence[str] = (),
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(
                    method=method.upper(),
                    path=path,
                    handler=handler,
                    auth=auth,
                    summary=summary,
                    tags=tuple(tags) or ((self.tag,) if self.tag else ()),
                    request=request,
                    request_required=request_required,
                    responses=dict(responses or {status: None}),
                    query=dict(query or {}),
                    status=status,
                )
            )
            return handler

        return register

    def get(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kwargs)


AuthenticateFn = Callable[[Request], Awaitable[Principal | None]]


def build_routes(endpoints: Sequence[Endpoint], authenticate: AuthenticateFn) -> list[Route]:
    """One Starlette route per path, dispatching on the method (405 otherwise)."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for endpoint in endpoints:
        methods = by_path.setdefault(endpoint.path, {})
        if endpoint.method in methods:
            raise ValueError(f"{endpoint.method} {endpoint.path} is declared twice")
        methods[endpoint.method] = endpoint
    return [
        Route(path, _dispatcher(methods, authenticate), methods=list(methods))
        for path, methods in by_path.items()
    ]


def _dispatcher(
    methods: Mapping[str, Endpoint], authenticate: AuthenticateFn
) -> Callable[[Request], Awaitable[Response]]:
    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        endpoint = methods[method]
        request.scope["lunasentri.endpoint"] = endpoint
        # Public endpoints skip authentication: it costs a storage read per request.
        principal = None if endpoint.auth is Auth.PUBLIC else await authenticate(request)
        _authorize(endpoint.auth, principal, _presented(request))
        call = Call(request, request.app.state.hub, request.app.state.settings, principal)
        result = await endpoint.handler(call)
        if isinstance(result, Response):
            return result
        return JsonAnswer(result, status_code=endpoint.status)

    return dispatch


def _presented(request: Request) -> bool:
    """Whether the request carries a credential (the authenticators found it wanting)."""
    headers = request.headers
    return "authorization" in headers or "x-api-key" in headers


def _authorize(auth: Auth, principal: Principal | None, presented: bool) -> None:
    if auth is Auth.PUBLIC:
        return
    if principal is None:
        raise ApiError(401, "unauthenticated", _unauthenticated(auth, presented))
    if auth is Auth.MACHINE:
        if principal.machine_id is None:
            raise ApiError(403, "forbidden", "this endpoint takes a machine API key")
        return
    if principal.kind != "user":
        raise ApiError(403, "forbidden", "this endpoint is for users, not machine keys")
    if auth is Auth.ADMIN and not principal.is_admin:
        raise ApiError(403, "forbidden", "administrators only")


def _unauthenticated(auth: Auth, presented: bool) -> str:
    if auth is Auth.MACHINE:
        if presented:
            return "the API key was refused: it is unknown, revoked or expired"
        return "a machine API key is required"
    if presented:
        return "the credentials were refused: the token is unknown, revoked or expired"
    return "log in first"


def _require_json(content_type: str | None) -> None:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    # application/json, or a JSON-based type such as application/merge-patch+json.
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return
    raise ApiError(
        415,
        "unsupported_media_type",
        f"the body must be application/json, not {media or 'of no content type'}",
        "content-type",
    )


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _gunzip(raw: bytes, limit: int) -> bytes:
    # Decompress in bounded steps so a small gzip bomb cannot exhaust memory.
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        body = decompressor.decompress(raw, limit + 1)
        if len(body) > limit or decompressor.unconsumed_tail:
            raise ApiError(413, "too_large", f"decompressed body is larger than {limit} bytes")
        if not decompressor.eof:
            raise ApiError(400, "malformed_gzip", "gzip body is truncated")
    except (zlib.error, gzip.BadGzipFile) as error:
        raise ApiError(400, "malformed_gzip", f"body is not valid gzip: {error}") from None
    return body


def parse_json(raw: bytes, cls: type[T]) -> T:
    """Decode a JSON request body into ``cls``: malformed or too deeply nested JSON is
    a 400, a wrong shape or value (a lone surrogate too) a 422 naming the field."""
    data = load_json(raw)
    if attrs.has(cls) and not isinstance(data, dict):
        # Otherwise the decoder's message names Python internals ('list' has no 'keys').
        raise ValidationError([FieldError("", "expected a JSON object")], what="request body")
    return decode(data, cls, what="request body")
