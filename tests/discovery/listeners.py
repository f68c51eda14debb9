"""Real TCP listeners on loopback addresses (127.71.0.0/16 only) for discovery tests."""

from __future__ import annotations

import ipaddress
import selectors
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def _check(address: str) -> None:
    # Tests reach loopback only: a typo must never send a packet elsewhere.
    if ipaddress.ip_address(address) not in LOOPBACK:
        raise ValueError(f"tests listen on 127.0.0.0/8 only, not {address}")


class Listeners:
    """Sockets listening on (address, port) pairs; a thread accepts and closes
    every connection, counting them per pair."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._sockets: list[socket.socket] = []
        self.accepted: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def listen(self, address: str, port: int = 0) -> int:
        """Listen on ``address:port`` (0: any free port); returns the port."""
        _check(address)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(512)
        sock.setblocking(False)
        bound = sock.getsockname()[1]
        with self._lock:
            self.accepted[(address, bound)] = 0
        self._sockets.append(sock)
        self._selector.register(sock, selectors.EVENT_READ, (address, bound))
        return int(bound)

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                try:
                    conn, _peer = key.fileobj.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                conn.close()
                with self._lock:
                    self.accepted[key.data] += 1

    def start(self) -> Listeners:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self._sockets:
            self._selector.unregister(sock)
            sock.close()
        self._selector.close()


@contextmanager
def listeners() -> Iterator[Listeners]:
    made = Listeners().start()
    try:
        yield made
    finally:
        made.close()


@contextmanager
def black_hole(address: str) -> Iterator[int]:
    """A port on ``address`` whose connection attempts hang: it listens with a full
    accept queue and never accepts, so the kernel drops new SYNs."""
    _check(address)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind((address, 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers = []
    for _ in range(3):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        with suppress(BlockingIOError):
            filler.connect((address, port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, server]:
            sock.close()


def closed_port(address: str) -> int:
    """A port on ``address`` that nothing listens on (bound, then released)."""
    _check(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def addresses(network: str) -> Iterable[str]:
    return (str(a) for a in ipaddress.ip_network(network).hosts())
