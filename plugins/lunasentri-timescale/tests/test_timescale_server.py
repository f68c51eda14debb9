"""The reference server (`lunasentri serve`, a real process) on PostgreSQL through the plugin."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from timescale_support import child_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ADMIN_PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(url: str, site: Path, data_dir: Path, port: int) -> subprocess.Popen[str]:
    env = child_env(site, LUNASENTRI_STORAGE__URL=url, LUNASENTRI_ADMIN_PASSWORD=ADMIN_PASSWORD)
    command = [sys.executable, "-m", "lunasentri_core.cli", "--log-level", "info", "serve"]
    return subprocess.Popen(
        [*command, "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_ready(base: str, process: subprocess.Popen[str]) -> httpx.Response:
    for _ in range(600):  # a condition to wait for, not a timing assertion
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"the server exited: {err}")
        try:
            response = httpx.get(f"{base}/healthz/ready", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        threading.Event().wait(0.1)
    pytest.fail("the server did not become ready")


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode in (0, -signal.SIGTERM), err
    return err


def at(minutes_ago: float) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes_ago)


def test_the_server_runs_on_postgresql(
    fresh_schema_url: Callable[[], str],
    site: Path,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    url = fresh_schema_url()  # a fresh schema: the server migrates it when it opens
    port = free_port()
    process = serve(url, site, tmp_path / "data", port)
    processes.append(process)
    base = f"http://127.0.0.1:{port}"

    ready = wait_ready(base, process).json()
    with httpx.Client(base_url=base, timeout=30) as client:
        login = client.post(
            "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
        assert login.status_code == 200, login.text
        client.headers["authorization"] = f"Bearer {login.json()['token']}"
        created = client.post("/api/v1/machines", json={"name": "db-host"})
        assert created.status_code == 201, created.text
        machine_id, key = created.json()["machine"]["id"], created.json()["api_key"]
        first, second = at(3), at(2)
        batch: dict[str, Any] = {
            "samples": [
                {"timestamp": first.isoformat(), "metrics": {"cpu.percent": 10.0}},
                {"timestamp": second.isoformat(), "metrics": {"cpu.percent": 30.0}},
            ]
        }
        as_agent = {"authorization": f"Bearer {key}"}
        ingested = client.post("/api/v1/ingest", json=batch, headers=as_agent)
        assert ingested.status_code == 200, ingested.text
        latest = client.get(f"/api/v1/machines/{machine_id}/latest").json()
        history = client.get(
            f"/api/v1/machines/{machine_id}/history",
            params={"metric": "cpu.percent", "step": "1s", "start": at(5).timestamp()},
        ).json()
    err = stop(process)

    assert ready["storage"]["backend"] == "timescale"
    assert ready["storage"]["mode"] in ("postgres", "timescale")
    partitioning = ready["storage"]["partitioning"]
    assert partitioning["width_hours"] == 24
    if partitioning["kind"] == "native":  # else a hypertable: chunks come with rows
        assert partitioning["ahead"] == 3
        assert partitioning["partitions"] >= 4  # today and three ahead
    else:
        assert partitioning["kind"] == "hypertable"
    assert f"storage timescale opened in {ready['storage']['mode']} mode" in err
    assert ADMIN_PASSWORD not in err
    assert [(i["metric"], i["value"]) for i in latest["items"]] == [("cpu.percent", 30.0)]
    assert [s["points"] for s in history["series"]] == [
        [[first.isoformat(), 10.0], [second.isoformat(), 30.0]]
    ]
    engine = sa.create_engine(url)  # and the rows are in PostgreSQL, in that schema
    try:
        with engine.connect() as conn:
            names = conn.exec_driver_sql("SELECT name FROM machines").scalars().all()
    finally:
        engine.dispose()
    assert names == ["db-host"]
