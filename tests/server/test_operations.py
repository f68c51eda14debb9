"""Operations: request ids, health, Prometheus metrics, CORS, TLS, logs, the serve command."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lunasentri_core import RetentionPolicy, hookimpl
from lunasentri_core.config import Settings
from lunasentri_core.server.demo import banner
from lunasentri_core.server.logs import TextFormatter
from lunasentri_core.storage import storage_mode
from lunasentri_core.storage.sql import SqlStorage

from .conftest import ADMIN_PASSWORD, LiveServer, MakeServer, free_port


def register(server: LiveServer, token: str, name: str) -> tuple[str, str]:
    with server.client(token) as client:
        response = client.post("/api/v1/machines", json={"name": name})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["machine"]["id"], body["api_key"]


def ingest_one(server: LiveServer, key: str, cpu: float) -> None:
    now = dt.datetime.now(dt.UTC).isoformat()
    body = {"samples": [{"timestamp": now, "metrics": {"cpu.percent": cpu}}]}
    with server.client(key) as client:
        response = client.post("/api/v1/ingest", json=body)
    assert response.status_code == 200, response.text


def test_request_ids_are_returned_and_kept_when_sane(server: LiveServer) -> None:
    with server.client() as client:
        generated = client.get("/healthz").headers["x-request-id"]
        kept = client.get("/healthz", headers={"x-request-id": "trace-42"})
        replaced = client.get("/healthz", headers={"x-request-id": "bad id with spaces"})

    assert len(generated) == 16
    assert kept.headers["x-request-id"] == "trace-42"
    assert replaced.headers["x-request-id"] != "bad id with spaces"


def test_health_endpoints(server: LiveServer) -> None:
    with server.client() as client:
        answers = {
            path: client.get(path) for path in ("/healthz", "/healthz/live", "/healthz/ready")
        }

    assert all(r.status_code == 200 for r in answers.values())
    assert answers["/healthz/ready"].json()["checks"] == {"storage": "ok", "plugins": "ok"}
    # SQLite has one way of working: no mode to report.
    assert answers["/healthz/ready"].json()["storage"] == {"backend": "sqlite"}


class _ModedStorage:
    """SQLite under another scheme, with a mode, as a plugin with several modes reports it."""

    name = "moded"
    schemes = ("moded",)
    settings_class = None

    @classmethod
    def open(cls, url: str, *, settings: object, retention: RetentionPolicy) -> SqlStorage:
        engine = sa.create_engine(url.replace("moded:", "sqlite:", 1))
        storage = SqlStorage(engine, retention=retention, name=cls.name)
        storage.mode = "fast"  # type: ignore[attr-defined]
        return storage


class _ModedPlugin:
    @hookimpl
    def lunasentri_register_storage(self) -> list[type[_ModedStorage]]:
        return [_ModedStorage]


def test_the_storage_s_mode_is_logged_and_ready_reports_it(
    make_server: MakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lunasentri_core.hub")
    live = make_server(
        plugins={"moded": _ModedPlugin()}, storage={"url": f"moded:///{tmp_path}/m.db"}
    )

    with live.client() as client:
        ready = client.get("/healthz/ready")

    assert ready.status_code == 200
    assert ready.json()["storage"] == {"backend": "moded", "mode": "fast"}
    assert f"storage moded opened in fast mode: moded:///{tmp_path}/m.db" in caplog.text
    assert storage_mode(live.app.state.hub.storage) == "fast"
    assert storage_mode(object()) is None


def test_prometheus_metrics_of_the_server(server: LiveServer) -> None:
    admin = server.login()
    _, key = register(server, admin, "prom")
    ingest_one(server, key, 12.5)
    with server.client() as client:
        client.get("/healthz")
        text = client.get("/metrics").text

    assert 'lunasentri_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'lunasentri_http_request_duration_seconds_bucket{le="0.005",method="POST",' in text
    assert "lunasentri_ingested_points_total 1.0" in text
    assert "lunasentri_write_queue_depth 0.0" in text
    assert "lunasentri_write_transaction_points_count" in text
    # Series values are opt-in.
    assert "lunasentri_cpu_percent" not in text


def test_series_values_on_metrics_when_enabled(make_server: MakeServer) -> None:
    server = make_server(server={"metrics_series": True})
    admin = server.login()
    _, key = register(server, admin, "exposed")
    ingest_one(server, key, 33.0)

    with server.client() as client:
        text = client.get("/metrics").text

    (line,) = [line for line in text.splitlines() if line.startswith("lunasentri_cpu_percent{")]
    assert line.startswith('lunasentri_cpu_percent{machine="exposed"} 33.0')


def test_cors_only_for_configured_origins(make_server: MakeServer) -> None:
    plain = make_server()
    cors = make_server(server={"cors_origins": ["https://dash.example"]})
    preflight = {
        "origin": "https://dash.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization",
    }

    with cors.client() as client:
        allowed = client.options("/api/v1/machines", headers=preflight)
        other = client.options("/api/v1/machines", headers={**preflight, "origin": "https://evil"})
    with plain.client() as client:
        simple = client.get("/healthz", headers={"origin": "https://dash.example"})

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
    assert other.status_code == 400
    assert "access-control-allow-origin" not in simple.headers


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def serve_process(
    *args: str, data_dir: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_")}
    full_env.update({"LUNASENTRI_ADMIN_PASSWORD": ADMIN_PASSWORD, **(env or {})})
    return subprocess.Popen(
        [sys.executable, "-m", "lunasentri_core.cli", "serve", "--data-dir", str(data_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )


def wait_ready(url: str, process: subprocess.Popen[str], **client_args: object) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            response = httpx.get(f"{url}/healthz/ready", timeout=2, **client_args)  # type: ignore[arg-type]
            if response.status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("server did not become ready")


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM, then check the shutdown was graceful (the lifespan's shutdown ran)."""
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    # uvicorn re-raises the signal once it has shut down, so -SIGTERM is a clean exit.
    assert process.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err
    return out, err


def test_tls_from_certificate_settings(
    tmp_path: Path, certificate: tuple[Path, Path], processes: list[subprocess.Popen[str]]
) -> None:
    cert, key = certificate
    port = free_port()
    process = serve_process(
        "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key), data_dir=tmp_path
    )
    processes.append(process)
    url = f"https://127.0.0.1:{port}"

    trusted = ssl.create_default_context(cafile=str(cert))
    wait_ready(url, process, verify=trusted)
    served = httpx.get(f"{url}/api/v1/openapi.json", verify=trusted, timeout=5)
    assert served.headers["strict-transport-security"] == "max-age=31536000"
    assert served.headers["x-content-type-options"] == "nosniff"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)  # not trusted without the certificate
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)  # plain HTTP is not served
    stop(process)


def test_json_logs_carry_the_request_id_and_shutdown_is_graceful(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    process = serve_process("--port", str(port), "--log-format", "json", data_dir=tmp_path)
    processes.append(process)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process)

    rid = httpx.get(f"{url}/healthz", headers={"x-request-id": "log-me-1"}).headers["x-request-id"]
    _, err = stop(process)

    entries = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (request_line,) = [e for e in entries if e.get("request_id") == rid]
    assert request_line["path"] == "/healthz"
    assert request_line["status"] == 200
    assert {"time", "level", "logger", "message"} <= set(request_line)


FORGED = "1999-01-01 00:00:00,000 INFO    lunasentri.server [-] admin logged in"
# Each path would end one log line and begin another (or repaint the terminal)
# if written raw: newlines, a carriage return, ESC, and the separators that
# str.splitlines() and some log viewers take for line ends.
HOSTILE_PATHS = {
    # as the text log must show it: the path, escaped
    r"\n": "/nowhere%0a" + quote(FORGED),
    r"\r\n": "/nowhere%0d%0a" + quote(FORGED),
    r"\x1b": "/esc%1b[2J%1b[31mred",
    r"\u2028": "/sep%e2%80%a8" + quote(FORGED),
    r"\x85": "/nel%c2%85" + quote(FORGED),
}


def _log_hostile_paths(
    tmp_path: Path, processes: list[subprocess.Popen[str]], log_format: str
) -> str:
    port = free_port()
    process = serve_process("--port", str(port), "--log-format", log_format, data_dir=tmp_path)
    processes.append(process)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process)
    for path in HOSTILE_PATHS.values():
        assert httpx.get(url + path).status_code == 404
    _, err = stop(process)
    return err


def test_text_logs_escape_client_controlled_values(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    err = _log_hostile_paths(tmp_path, processes, "text")

    assert [line for line in err.splitlines() if line.startswith(FORGED)] == []
    assert not any(c in err for c in "\r\x1b\x85\u2028"), "a raw control character was logged"
    for escaped in HOSTILE_PATHS:
        assert f"{escaped}{FORGED}" in err or escaped == r"\x1b", escaped
    assert "GET /esc\\x1b[2J\\x1b[31mred 404" in err


def test_json_logs_stay_one_valid_entry_per_line(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    err = _log_hostile_paths(tmp_path, processes, "json")

    entries = [json.loads(line) for line in err.split("\n") if line]
    logged = {e["path"] for e in entries if e.get("status") == 404}
    assert logged == {unquote(path) for path in HOSTILE_PATHS.values()}


def test_the_server_does_not_report_its_own_host_by_default(make_server: MakeServer) -> None:
    quiet = make_server()
    local = make_server(local_host_metrics=True, collect={"interval": "0.5s"})

    def machines(server: LiveServer) -> list[dict[str, object]]:
        with server.client(server.login()) as client:
            items: list[dict[str, object]] = client.get("/api/v1/machines").json()["items"]
            return items

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [m for m in machines(local) if m["kind"] == "local" and m["latest"]]
        if found:
            break
        time.sleep(0.2)
    assert found, "the local host never reported"
    assert machines(quiet) == []


def test_the_demo_banner_shows_the_password_it_is_given_only(tmp_path: Path) -> None:
    settings = Settings.load(environ={}, data_dir=tmp_path, admin_password="from the env 1")

    configured = banner(settings, "user 'admin', password: the one in ...", "PASSWORD")
    generated = banner(settings, "user 'admin', password 'made-up-2'", "made-up-2")

    assert "from the env 1" not in configured
    assert '"password": "PASSWORD"' in configured
    assert "'made-up-2'" in generated
    assert '"password": "made-up-2"' in generated


def test_demo_serves_this_machines_metrics_within_seconds(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    process = serve_process("--port", str(port), "--demo", data_dir=tmp_path)
    processes.append(process)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process)
    login = httpx.post(
        f"{url}/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    headers = {"authorization": f"Bearer {login.json()['token']}"}

    # cpu.percent needs two readings of the CPU times, so it can lag the first sample.
    wanted = {"cpu.percent", "mem.used", "mem.total", "disk.used"}
    deadline = time.monotonic() + 30
    metrics: set[str] = set()
    while time.monotonic() < deadline and not wanted <= metrics:
        (machine,) = httpx.get(f"{url}/api/v1/machines", headers=headers).json()["items"]
        latest = httpx.get(f"{url}/api/v1/machines/{machine['id']}/latest", headers=headers)
        metrics = {item["metric"] for item in latest.json()["items"]}
        time.sleep(0.5)
    # The dashboard shows the same machine to the same login.
    with httpx.Client(base_url=url) as browser:
        form = {"username": "admin", "password": ADMIN_PASSWORD, "next": "/"}
        assert browser.post("/login", data=form).status_code == 303
        page = browser.get("/").text
    out, err = stop(process)

    assert wanted <= metrics
    assert f'href="/machines/{machine["id"]}"' in page
    assert "LunaSentri demo is running" in out
    # The password came from LUNASENTRI_ADMIN_PASSWORD: its owner knows it, logs must not.
    assert ADMIN_PASSWORD not in out + err
    assert "LUNASENTRI_ADMIN_PASSWORD" in out
    assert f"dashboard:  {url}/" in out
    assert f"{url}/api/v1/openapi.json" in out


def test_a_traceback_in_text_logs_cannot_pass_for_a_record() -> None:
    formatter = TextFormatter()
    try:
        raise ValueError(f"bad name\n{FORGED}\x1b[2J")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "got %r", ("a\nb",), None)
        record.exc_info = sys.exc_info()
    record.request_id = "-"

    first, *rest = formatter.format(record).split("\n")

    assert first.endswith("got 'a\\nb'")
    assert len(rest) > 2
    assert all(line.startswith("| ") for line in rest)
    assert f"| {FORGED}\\x1b[2J" in rest
