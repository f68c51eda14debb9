"""Fuzz the reference server against its own OpenAPI document with schemathesis.

Run by ``nox -s schemathesis``. Starts ``lunasentri serve`` on a free loopback port
with a fresh data directory, logs in the admin and a normal user, and runs
schemathesis in positive and in negative mode with every check, once per token.
Exits non-zero on any failure. Generation is deterministic (a fixed seed and
derandomized hypothesis) and bounded (examples per operation), so two runs of the
same tree send the same requests: a fuzzing session that fails at random would
block every landing.

Arguments are passed to every ``schemathesis run`` (e.g. ``--max-examples 5``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

ADMIN_PASSWORD = "fuzzing admin password"
USER_NAME = "fuzzuser"
USER_PASSWORD = "fuzzing user password"
MODES = ("positive", "negative")
START_TIMEOUT = 60.0
SCHEMATHESIS_ARGS = [
    "--checks",
    "all",
    "--max-examples",
    "25",
    "--seed",
    "20261206",
    # Deterministic generation also keeps no example database between runs.
    "--generation-deterministic",
    "--request-timeout",
    "30",
    "--workers",
    "1",
    "--no-color",
    # Stateful testing chains requests at random lengths; the three other phases
    # cover every operation and are bounded by --max-examples.
    "--phases",
    "examples,coverage,fuzzing",
]
# The session endpoints that end the very token the run uses: fuzzed, they would
# turn every later request into a 401 and test nothing. test_auth.py covers them.
EXCLUDED_OPERATIONS = [
    "--exclude-operation-id",
    "logout",
    "--exclude-operation-id",
    "change_password",
    "--exclude-operation-id",
    "revoke_session",
    # An event stream stays open until the client leaves: each case would wait for
    # the request timeout. test_queries.py tests it.
    "--exclude-operation-id",
    "stream",
]
CONFIG = Path(__file__).with_name("schemathesis.toml")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_server(data_dir: Path, log: Path) -> Iterator[str]:
    """``lunasentri serve`` on a free loopback port, logging to ``log``; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LUNASENTRI_ADMIN_PASSWORD": ADMIN_PASSWORD}
    command = ["lunasentri", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--data-dir", str(data_dir)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_ready(url, process)
        except SystemExit:
            print(log.read_text(errors="replace")[-4000:])
            raise
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling interval under a deadline, not a timed assertion
    raise SystemExit(f"the server was not ready within {START_TIMEOUT:.0f} s")


def login(client: httpx.Client, username: str, password: str) -> str:
    response = client.post("/api/v1/auth/login", json={"username": username, "password": password})
    response.raise_for_status()
    # The login also sets the session cookie; a cookie-borne write without an Origin
    # header is refused as cross-site, and the run authenticates by bearer token.
    client.cookies.clear()
    token: str = response.json()["token"]
    return token


def tokens(url: str) -> dict[str, str]:
    """A session token for the admin and for a normal user it creates."""
    with httpx.Client(base_url=url, timeout=30) as client:
        admin = login(client, "admin", ADMIN_PASSWORD)
        created = client.post(
            "/api/v1/users",
            json={"username": USER_NAME, "password": USER_PASSWORD, "role": "user"},
            headers={"authorization": f"Bearer {admin}"},
        )
        created.raise_for_status()
        user = login(client, USER_NAME, USER_PASSWORD)
    return {"admin": admin, "user": user}


def run(url: str, who: str, token: str, mode: str, extra: Sequence[str], cwd: Path) -> int:
    command = [
        "schemathesis",
        "--config-file",
        str(CONFIG),
        "run",
        f"{url}/api/v1/openapi.json",
        "--url",
        url,
        "--mode",
        mode,
        "--header",
        f"Authorization: Bearer {token}",
        *SCHEMATHESIS_ARGS,
        *EXCLUDED_OPERATIONS,
        *extra,
    ]
    print(f"\n=== schemathesis: {mode} mode as {who} ===", flush=True)
    # In a fresh directory: schemathesis keeps a cache of past crashes in its working
    # directory and replays them, which would make one run depend on the last.
    return subprocess.run(command, check=False, cwd=cwd).returncode


def main(argv: Sequence[str]) -> int:
    results: dict[tuple[str, str], int] = {}
    for who in ("admin", "user"):
        for mode in MODES:
            # A fresh server each time: the admin's run deletes users and revokes
            # sessions, which would leave the user's run testing nothing but 401s.
            with tempfile.TemporaryDirectory(prefix="lunasentri-fuzz-") as data_dir:
                log = Path(data_dir) / "server.log"
                with running_server(Path(data_dir), log) as url:
                    token = tokens(url)[who]
                    results[(who, mode)] = run(url, who, token, mode, argv, Path(data_dir))
                if results[(who, mode)] != 0:
                    # The server's side of what failed (a request per line).
                    print("".join(log.read_text(errors="replace").splitlines(True)[-200:]))
    print("\n=== schemathesis summary ===")
    for (who, mode), code in results.items():
        print(f"{who:5} {mode:8} {'ok' if code == 0 else f'FAILED (exit {code})'}")
    return 0 if all(code == 0 for code in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
