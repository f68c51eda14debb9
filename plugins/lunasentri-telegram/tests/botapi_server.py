"""A stand-in for the Telegram Bot API on loopback: ``sendMessage`` as Telegram answers it.

It takes JSON, form and query-string parameters, checks the token and the
chat, parses HTML-mode text the way Telegram does (only Telegram's tags and
entities, balanced, at most 4096 characters once parsed) and answers with the
Bot API's shapes: ``{"ok": true, "result": Message}`` or ``{"ok": false,
"error_code", "description", "parameters"}``. Tests can script the next
answers (429 with ``retry_after``, 500, 400, a slow answer).
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl

import attrs
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BOT_ID = 7000000001
TOKEN = f"{BOT_ID}:AAE-lunaSentri_test-7hGq2Zt9xWk4Rb1"
OTHER_BOT_TOKEN = "7000000002:AAF-unknown_bot-0123456789abcdefghij"
"""Well-formed, but no bot has it: Telegram answers 401."""

PRIVATE = 111111111
BLOCKED = 222222222
GROUP = -1001000000001
CHANNEL = -1001000000002
CHANNEL_USERNAME = "lunasentri_alerts"
FORUM = -1001000000003
FORUM_TOPIC = 7
KICKED = -1001000000004
OLD_GROUP = -4000000001
SUPERGROUP = -1001000000005
UNKNOWN = 333333333

MAX_TEXT = 4096
_TOKEN_SHAPE = re.compile(r"^[0-9]+:[A-Za-z0-9_-]+$")
_NAMED_ENTITIES = {"lt", "gt", "amp", "quot"}
_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
}


# --------------------------------------------------------------------------- HTML mode


class EntityError(ValueError):
    """Telegram's "can't parse entities" (the message is its description's tail)."""


@attrs.frozen
class Parsed:
    text: str
    entities: tuple[dict[str, Any], ...]


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class _TelegramHtml(HTMLParser):
    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=False)
        self._source = source
        self._lines = [0, *(match.end() for match in re.finditer("\n", source))]
        self._parts: list[str] = []
        self._length = 0
        self._open: list[tuple[str, str, int, dict[str, str | None]]] = []
        self._entities: list[dict[str, Any]] = []

    def _at(self, message: str, extra_chars: str = "") -> EntityError:
        line, column = self.getpos()
        before = self._source[: self._lines[line - 1] + column] + extra_chars
        return EntityError(f"{message} at byte offset {len(before.encode())}")

    def _append(self, text: str) -> None:
        self._parts.append(text)
        self._length += utf16_length(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        kind = _TAGS.get(tag)
        attributes = dict(attrs)
        if kind is None or (tag == "span" and attributes.get("class") != "tg-spoiler"):
            raise self._at(f'Unsupported start tag "{tag}"')
        if tag == "a" and not attributes.get("href"):
            raise self._at("Empty href in a tag")
        inside = self._open[-1][1] if self._open else None
        if inside in ("code", "pre") and (inside, tag) != ("pre", "code"):
            raise self._at(f'Unsupported tag "{tag}" inside "{inside}"')
        self._open.append((tag, kind, self._length, attributes))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raise self._at(f'Unsupported start tag "{tag}/"')

    def handle_endtag(self, tag: str) -> None:
        if not self._open or self._open[-1][0] != tag:
            raise self._at("Unexpected end tag")
        _, kind, start, attributes = self._open.pop()
        if self._length > start:
            entity: dict[str, Any] = {"type": kind, "offset": start, "length": self._length - start}
            if kind == "text_link":
                entity["url"] = attributes["href"]
            self._entities.append(entity)

    def handle_data(self, data: str) -> None:
        found = re.search("[<>&]", data)
        if found:
            raise self._at(
                f"Character '{found.group()}' is reserved and must be escaped",
                data[: found.start()],
            )
        self._append(data)

    def handle_entityref(self, name: str) -> None:
        if name not in _NAMED_ENTITIES:
            raise self._at(f'Unsupported HTML entity "&{name};"')
        self._append(html.unescape(f"&{name};"))

    def handle_charref(self, name: str) -> None:
        try:
            self._append(chr(int(name[1:], 16) if name[:1] in "xX" else int(name)))
        except (ValueError, OverflowError):
            raise self._at("Invalid character reference") from None

    def handle_comment(self, data: str) -> None:
        raise self._at("Unsupported comment")

    def handle_decl(self, decl: str) -> None:
        raise self._at("Unsupported declaration")

    def handle_pi(self, data: str) -> None:
        raise self._at("Unsupported processing instruction")

    def unknown_decl(self, data: str) -> None:
        raise self._at("Unsupported declaration")

    def finish(self) -> Parsed:
        self.close()
        if self._open:
            tag = self._open[-1][0]
            raise EntityError(f'Can\'t find end tag corresponding to start tag "{tag}"')
        ordered = sorted(self._entities, key=lambda e: (e["offset"], -e["length"]))
        return Parsed("".join(self._parts), tuple(ordered))


def parse_html(source: str) -> Parsed:
    """Text and entities of an HTML-mode message; :class:`EntityError` as Telegram rejects it."""
    parser = _TelegramHtml(source)
    parser.feed(source)
    return parser.finish()


# --------------------------------------------------------------------------- the server


@attrs.define
class Chat:
    id: int
    type: str
    """``private``, ``group``, ``supergroup`` or ``channel``."""
    title: str = "Ops"
    username: str | None = None
    topics: frozenset[int] = frozenset()
    forbidden: str | None = None
    """Why the bot may not post here (answered with 403)."""
    migrated_to: int | None = None

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"id": self.id, "type": self.type}
        found["first_name" if self.type == "private" else "title"] = self.title
        if self.username:
            found["username"] = self.username
        if self.topics:
            found["is_forum"] = True
        return found


@attrs.frozen
class Sent:
    """A message the server accepted."""

    token: str
    chat_id: int
    message_id: int
    text: str
    """The text as a reader sees it, after the entities were parsed."""
    entities: tuple[dict[str, Any], ...]
    source: str
    """The text as the bot sent it."""
    parameters: Mapping[str, Any]
    content_type: str
    at: float
    """When it arrived, on the server's ``clock``."""


@attrs.frozen
class Scripted:
    """An answer to give instead of handling the next request."""

    status: int = 0
    description: str = ""
    parameters: Mapping[str, Any] | None = None
    delay: float = 0.0
    raw: str | None = None
    """A body that is not a Bot API answer (a proxy's error page)."""


class ApiError(Exception):
    def __init__(
        self, status: int, description: str, parameters: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.status,
            "description": self.description,
        }
        if self.parameters:
            body["parameters"] = dict(self.parameters)
        headers = {}
        if self.parameters and "retry_after" in self.parameters:
            headers["retry-after"] = str(self.parameters["retry_after"])
        return JSONResponse(body, status_code=self.status, headers=headers)


def default_chats() -> list[Chat]:
    return [
        Chat(PRIVATE, "private"),
        Chat(BLOCKED, "private", forbidden="Forbidden: bot was blocked by the user"),
        Chat(GROUP, "supergroup", title="Ops alerts"),
        Chat(CHANNEL, "channel", title="Alerts", username=CHANNEL_USERNAME),
        Chat(FORUM, "supergroup", title="Ops forum", topics=frozenset({FORUM_TOPIC})),
        Chat(KICKED, "supergroup", forbidden="Forbidden: bot was kicked from the supergroup chat"),
        Chat(OLD_GROUP, "group", title="Old ops", migrated_to=SUPERGROUP),
        Chat(SUPERGROUP, "supergroup", title="Old ops"),
    ]


class BotApiServer:
    """The Bot API on an ephemeral loopback port; its state is shared with the test thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bots = {TOKEN: {"id": BOT_ID, "is_bot": True, "first_name": "LunaSentri test"}}
        self.chats: dict[int, Chat] = {}
        self.sent: list[Sent] = []
        self.requests: list[tuple[str, str]] = []
        """``(token, method)`` of every request, answered or not."""
        self._script: list[Scripted] = []
        self._message_ids: dict[int, int] = {}
        self.clock: Callable[[], float] = time.monotonic
        """Stamps each accepted message; a test sets its fake clock here."""
        self.app = Starlette(
            routes=[Route("/bot{token}/{method}", self._handle, methods=["GET", "POST"])]
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.reset()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -------------------------------------------------------------- test controls

    def reset(self) -> None:
        with self._lock:
            self.chats = {chat.id: chat for chat in default_chats()}
            self.sent.clear()
            self.requests.clear()
            self._script.clear()
            self._message_ids.clear()
            self.clock = time.monotonic

    def script(self, *answers: Scripted) -> None:
        """Answer the next requests with these, in order, whatever they ask."""
        with self._lock:
            self._script.extend(answers)

    def messages(self, chat_id: int) -> list[Sent]:
        with self._lock:
            return [sent for sent in self.sent if sent.chat_id == chat_id]

    def send_times(self, chat_id: int) -> list[float]:
        """When each message to ``chat_id`` arrived, in order."""
        return [sent.at for sent in self.messages(chat_id)]

    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    # -------------------------------------------------------------- running

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        # No access log: it would print the token in each path, and this
        # process's log is what the token tests search.
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        for _ in range(500):
            if self._server.started or not self._thread.is_alive():
                break
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError("the Bot API test server did not start")

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None

    # -------------------------------------------------------------- the API

    async def _handle(self, request: Request) -> Response:
        token, method = request.path_params["token"], request.path_params["method"]
        with self._lock:
            self.requests.append((token, method))
            scripted = self._script.pop(0) if self._script else None
        if scripted is not None and scripted.delay:
            await asyncio.sleep(scripted.delay)
        try:
            if scripted is not None and scripted.raw is not None:
                return Response(scripted.raw, status_code=scripted.status, media_type="text/html")
            if scripted is not None and scripted.status:
                raise ApiError(scripted.status, scripted.description, scripted.parameters)
            if not _TOKEN_SHAPE.match(token) or method.lower() != "sendmessage":
                raise ApiError(404, "Not Found")
            if token not in self.bots:
                raise ApiError(401, "Unauthorized")
            parameters = await _parameters(request)
            result = self._send_message(token, parameters, request.headers.get("content-type", ""))
        except ApiError as error:
            return error.response()
        return JSONResponse({"ok": True, "result": result})

    def _send_message(
        self, token: str, parameters: Mapping[str, Any], content_type: str
    ) -> dict[str, Any]:
        chat = self._chat(parameters.get("chat_id"))
        if chat.forbidden:
            raise ApiError(403, chat.forbidden)
        if chat.migrated_to is not None:
            raise ApiError(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": chat.migrated_to},
            )
        thread = _integer(parameters.get("message_thread_id"), "message_thread_id")
        if thread is not None and thread not in chat.topics:
            raise ApiError(400, "Bad Request: message thread not found")
        source = parameters.get("text")
        if not isinstance(source, str) or not source.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        parsed = _parse(source, parameters.get("parse_mode"))
        if not parsed.text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16_length(parsed.text) > MAX_TEXT:
            raise ApiError(400, "Bad Request: message is too long")
        preview = _link_preview_options(parameters.get("link_preview_options"))
        with self._lock:
            message_id = self._message_ids[chat.id] = self._message_ids.get(chat.id, 0) + 1
            self.sent.append(
                Sent(
                    token,
                    chat.id,
                    message_id,
                    parsed.text,
                    parsed.entities,
                    source,
                    dict(parameters),
                    content_type.split(";")[0],
                    self.clock(),
                )
            )
        return _message(self.bots[token], chat, message_id, parsed, thread, preview)

    def _chat(self, raw: object) -> Chat:
        if raw is None or raw == "":
            raise ApiError(400, "Bad Request: chat_id is empty")
        with self._lock:
            if isinstance(raw, str) and raw.startswith("@"):
                for chat in self.chats.values():
                    if chat.username and chat.username.lower() == raw[1:].lower():
                        return chat
                raise ApiError(400, "Bad Request: chat not found")
        chat_id = _integer(raw, "chat_id")
        with self._lock:
            found = self.chats.get(chat_id) if chat_id is not None else None
        if found is None:
            raise ApiError(400, "Bad Request: chat not found")
        return found


async def _parameters(request: Request) -> dict[str, Any]:
    """Query string, then a JSON or form body, as the Bot API accepts them."""
    parameters: dict[str, Any] = dict(request.query_params)
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            decoded = json.loads(body or b"{}")
        except ValueError:
            raise ApiError(400, "Bad Request: can't parse JSON object") from None
        if not isinstance(decoded, dict):
            raise ApiError(400, "Bad Request: JSON object expected")
        parameters.update(decoded)
    elif content_type == "application/x-www-form-urlencoded":
        parameters.update(parse_qsl(body.decode(), keep_blank_values=True))
    elif body:
        raise ApiError(400, f"Bad Request: unsupported content type {content_type!r}")
    return parameters


def _integer(raw: object, name: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"-?[0-9]+", raw):
        return int(raw)
    raise ApiError(400, f"Bad Request: invalid {name} specified")


def _parse(source: str, parse_mode: object) -> Parsed:
    if parse_mode is None or parse_mode == "":
        return Parsed(source, ())
    if not isinstance(parse_mode, str) or parse_mode.lower() != "html":
        raise ApiError(400, f"Bad Request: unsupported parse_mode {parse_mode!r} in this stand-in")
    try:
        return parse_html(source)
    except EntityError as error:
        raise ApiError(400, f"Bad Request: can't parse entities: {error}") from None


def _link_preview_options(raw: object) -> dict[str, Any] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if not isinstance(raw, dict):
        raise ApiError(400, "Bad Request: can't parse link preview options JSON object")
    return raw


def _message(
    bot: Mapping[str, Any],
    chat: Chat,
    message_id: int,
    parsed: Parsed,
    thread: int | None,
    preview: Mapping[str, Any] | None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"message_id": message_id, "date": int(time.time())}
    if chat.type == "channel":
        message["sender_chat"] = chat.as_json()
    else:
        message["from"] = dict(bot)
    message["chat"] = chat.as_json()
    if thread is not None:
        message["message_thread_id"] = thread
        message["is_topic_message"] = True
    message["text"] = parsed.text
    if parsed.entities:
        message["entities"] = list(parsed.entities)
    if preview:
        message["link_preview_options"] = dict(preview)
    return message


def running() -> Iterator[BotApiServer]:
    """Start a server for the length of a fixture."""
    server = BotApiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
