"""A real ``lunasentri serve`` killed in the middle of webhook deliveries, and restarted.

Forty machines are stored as online but silent for ten minutes; the server's
first heartbeat sweep takes them offline, and the dispatcher posts forty signed
``machine.offline`` events to a slow receiver on loopback. The server is killed
with SIGKILL after a few have arrived and started again on the same database:
every event arrives, a receiver deduplicating by ``webhook-id`` sees each once,
and the restart raises no second offline notice.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from lunasentri_core import Machine, MachineStatus, Settings, User
from lunasentri_core.codec import encode
from lunasentri_core.hub import open_storage
from lunasentri_core.model import Channel, DeliveryState, Role, new_id, utcnow
from lunasentri_core.plugins import create_plugin_manager
from lunasentri_core.storage import StorageBackend
from lunasentri_webhooks import WebhookChannel, generate_secret, verify

MACHINES = 40
SECRET = generate_secret()


class Receiver(ThreadingHTTPServer):
    """Verifies each request's signature and records it; answers slowly.

    Past ``hold_after`` recorded requests it records none until :attr:`released`
    is set: the requests that come meanwhile wait and are then refused, so the
    server can be killed in the middle of its deliveries however slowly the
    test runs (a loaded machine once let all of them through before the kill).
    """

    daemon_threads = True

    def __init__(self, delay: float, hold_after: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay = delay
        self.hold_after = hold_after
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, object]]] = []
        self.rejected = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"

    def unique(self) -> dict[str, dict[str, object]]:
        with self.lock:
            return dict(self.requests)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        length = int(self.headers["content-length"])
        body = self.rfile.read(length)
        if len(body) < length:
            return  # the sender was killed in the middle of its request: nothing arrived
        try:
            verify(SECRET, dict(self.headers), body)
        except ValueError:
            with self.server.lock:
                self.server.rejected += 1
            self.send_response(400)
            self.end_headers()
            return
        time.sleep(self.server.delay)
        with self.server.lock:
            held = len(self.server.requests) >= self.server.hold_after
            held = held and not self.server.released.is_set()
            if not held:
                self.server.requests.append((self.headers["webhook-id"], json.loads(body)))
        if held:
            self.server.released.wait(60)
        self.send_response(503 if held else 204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(delay=0.1, hold_after=8)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def storage(data_dir: Path) -> StorageBackend:
    settings = Settings.load(environ={}, data_dir=data_dir)
    return open_storage(settings, create_plugin_manager(settings))


def seed(data_dir: Path, url: str) -> None:
    """A user with a webhook channel and machines that fell silent ten minutes ago."""
    store = storage(data_dir)
    state = store.state
    owner = state.add_user(User(id=new_id(), username="ops", role=Role.USER), "x")
    config = encode(WebhookChannel(url=url, secret=SECRET))
    state.add_channel(
        Channel(id=new_id(), owner_id=owner.id, name="hooks", type="webhook", config=config)
    )
    silent_since = utcnow() - timedelta(minutes=10)
    for i in range(MACHINES):
        machine = Machine(
            id=new_id(),
            name=f"m{i:02}",
            owner_id=owner.id,
            status=MachineStatus.ONLINE,
            last_seen=silent_since,
        )
        state.add_machine(machine)
    store.close()


def start(data_dir: Path, config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LUNASENTRI_CONFIG": str(config),
        "LUNASENTRI_DATA_DIR": str(data_dir),
        "LUNASENTRI_ADMIN_PASSWORD": "an admin nobody uses here",
    }
    command = [sys.executable, "-m", "lunasentri_core", "serve", "--port", str(port)]
    with log.open("ab") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz/ready", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise AssertionError(f"the server did not become ready: {log.read_text()[-2000:]}")


def wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_every_event_arrives_once_per_id_across_a_kill(tmp_path: Path, receiver: Receiver) -> None:
    data_dir = tmp_path / "data"
    seed(data_dir, receiver.url)
    config = tmp_path / "lunasentri.toml"
    # Machines silent since before the start go offline once the start is a
    # threshold behind (the heartbeat's grace), so keep the threshold and the grace short.
    config.write_text(
        'heartbeat_interval = "1s"\n'
        'offline_threshold = "2s"\n'
        'restart_grace = "0s"\n'
        "[notifications]\n"
        'lease = "2s"\n'
        'backoff = "1s"\n'
        "[plugins.webhook]\n"
        "allow_private_addresses = true\n"
    )
    port = free_port()

    log = tmp_path / "server.log"
    first = start(data_dir, config, port, log)
    try:
        assert wait_for(lambda: len(receiver.requests) >= 8, 30), "deliveries did not start"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert len(receiver.unique()) == 8, "the receiver held the others until the kill"
    receiver.released.set()

    second = start(data_dir, config, port, log)
    try:
        assert wait_for(lambda: len(receiver.unique()) >= MACHINES, 60), (
            f"only {len(receiver.unique())} of {MACHINES} events arrived"
        )
        time.sleep(1)  # anything extra would show now
    finally:
        second.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after a graceful stop.
        assert second.wait(30) in (0, -signal.SIGTERM)

    unique = receiver.unique()
    assert len(unique) == MACHINES
    assert receiver.rejected == 0
    assert {event["type"] for event in unique.values()} == {"machine.offline"}
    names = sorted(event["data"]["machine"]["name"] for event in unique.values())  # type: ignore[index]
    assert names == [f"m{i:02}" for i in range(MACHINES)]
    # At least once: a delivery in flight at the kill may arrive twice, with the same id.
    assert len(receiver.requests) >= MACHINES

    store = storage(data_dir)
    found = store.state.list_deliveries(None, limit=1000)
    store.close()
    assert [d.state for d in found] == [DeliveryState.DELIVERED] * MACHINES
