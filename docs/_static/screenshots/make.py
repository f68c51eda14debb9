"""Take the dashboard screenshots in this directory: a server on loopback with an hour
of generated samples for a few machines, one alert firing, Chromium at 1100 x 700.

Run from the repository root (Playwright and the system's Chromium, as the browser
tests use): ``python docs/_static/screenshots/make.py``.
"""

from __future__ import annotations

import math
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from tests.server.conftest import ADMIN_PASSWORD, LiveServer, free_port  # noqa: E402

from lunasentri_core.config import Settings  # noqa: E402

HERE = Path(__file__).parent
MACHINES = {"db-1": 62.0, "web-1": 18.0, "web-2": 23.0, "cache-1": 9.0, "build-1": 99.0}


def readings(cpu: float, phase: float) -> list[dict[str, object]]:
    now = datetime.now(UTC).replace(microsecond=0)
    out = []
    for minute in range(60, -1, -1):
        wave = math.sin(minute / 7 + phase)
        out.append(
            {
                "timestamp": (now - timedelta(minutes=minute)).isoformat(),
                "metrics": {
                    "cpu.percent": max(0.0, min(100.0, cpu + 8 * wave)),
                    "mem.used": (3.1 + 0.3 * wave) * 2**30,
                    "mem.total": 8.0 * 2**30,
                    "load.1": max(0.0, cpu / 25 + 0.3 * wave),
                    "disk.used": [{"labels": {"mount": "/"}, "value": 41.5 * 2**30}],
                    "disk.total": [{"labels": {"mount": "/"}, "value": 100.0 * 2**30}],
                    "net.rx_rate": [{"labels": {"nic": "eth0"}, "value": 2e6 + 6e5 * wave}],
                    "net.tx_rate": [{"labels": {"nic": "eth0"}, "value": 4e5 + 1e5 * wave}],
                },
            }
        )
    return out


def main() -> None:
    data = Path(tempfile.mkdtemp(prefix="lunasentri-shots-"))
    settings = Settings.load(
        environ={}, data_dir=data, admin_password=ADMIN_PASSWORD, server={"host": "127.0.0.1"}
    )
    server = LiveServer(settings, port=free_port())
    server.start()
    try:
        admin = server.login()
        ids = {}
        with server.client(admin) as api:
            rule = {
                "name": "CPU busy",
                "metric": "cpu.percent",
                "comparison": ">",
                "threshold": 90,
                "severity": "critical",
            }
            assert api.post("/api/v1/alert-rules", json=rule).status_code == 201
            for phase, (name, cpu) in enumerate(MACHINES.items()):
                labels = {"env": "prod", "role": name.split("-")[0]}
                made = api.post("/api/v1/machines", json={"name": name, "labels": labels}).json()
                ids[name] = made["machine"]["id"]
                with server.client(made["api_key"]) as agent:
                    body = {"samples": readings(cpu, phase)}
                    assert agent.post("/api/v1/ingest", json=body).status_code == 200
        with sync_playwright() as driver:
            browser = driver.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(f"{server.url}/login")
            page.fill("#username", "admin")
            page.fill("#password", ADMIN_PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector(".card svg.spark")
            page.wait_for_timeout(500)
            page.screenshot(path=HERE / "overview.png")
            page.goto(f"{server.url}/machines/{ids['db-1']}")
            page.wait_for_selector("#chart-net .uplot")
            page.screenshot(path=HERE / "machine.png")
            page.goto(f"{server.url}/alerts")
            page.wait_for_selector("#current tr.current-alert")
            page.screenshot(path=HERE / "alerts.png")
            phone = browser.new_page(viewport={"width": 390, "height": 700})
            phone.context.add_cookies(page.context.cookies())
            phone.goto(f"{server.url}/machines/{ids['db-1']}")
            phone.wait_for_selector("#chart-cpu .uplot")
            phone.screenshot(path=HERE / "machine-phone.png")
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
