"""A real webhook receiver on loopback: verifies signatures, records, answers as told."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections import deque
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs

from lunasentri_webhooks import WebhookVerificationError, verify


@attrs.frozen
class Reply:
    """How the receiver answers one request."""

    status: int = 204
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = b""
    delay: float = 0.0
    """Seconds to wait before answering (cut short when the receiver closes)."""
    barrier: threading.Barrier | None = None
    """Answer only once this many requests wait together (it breaks after its timeout)."""


@attrs.frozen
class Delivery:
    """One POST the receiver got."""

    path: str
    headers: Mapping[str, str]
    """Header names lower-cased."""
    body: bytes
    problem: str | None
    """Why :func:`verify` refused the request, or ``None`` when it verified."""

    @property
    def event(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """A threaded HTTP(S) server on an ephemeral loopback port.

    Requests that fail :func:`lunasentri_webhooks.verify` get 401 with the reason;
    the others get the queued :class:`Reply` objects in turn, then 204.
    """

    def __init__(
        self, secret: str, *, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ) -> None:
        self.secret = secret
        self.host = host
        self.deliveries: list[Delivery] = []
        self.other_requests: list[str] = []
        self.server_names: list[str | None] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.closing = threading.Event()
        self._server = _Server((host, 0), _Handler, receiver=self)
        self.scheme = "http"
        if tls is not None:
            tls.sni_callback = self._record_server_name
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, host: str | None = None, path: str = "/hook") -> str:
        name = host or self.host
        if ":" in name:
            name = f"[{name}]"
        return f"{self.scheme}://{name}:{self.port}{path}"

    def answer(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def close(self) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def record(self, delivery: Delivery) -> Reply:
        with self._lock:
            self.deliveries.append(delivery)
            if delivery.problem is not None:
                return Reply(401, body=delivery.problem.encode())
            return self._replies.popleft() if self._replies else Reply()

    def _record_server_name(self, _: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        self.server_names.append(name)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], *, receiver: WebhookReceiver
    ):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.receiver = receiver
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test) leaves a broken pipe; nothing to report.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        receiver = self.server.receiver
        try:
            verify(receiver.secret, headers, body)
            problem = None
        except WebhookVerificationError as error:
            problem = str(error)
        reply = receiver.record(Delivery(self.path, headers, body, problem))
        if reply.delay:
            receiver.closing.wait(reply.delay)
        if reply.barrier is not None:
            reply.barrier.wait()
        self._answer(reply)

    def do_GET(self) -> None:
        self.server.receiver.other_requests.append(f"GET {self.path}")
        self._answer(Reply(200, body=b"followed"))

    def _answer(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
