"""Plugin load failures where operators look: readiness and the admins' plugin list."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .conftest import MakeServer

MakeDistribution = Callable[..., Path]

PASSWORD = "a perfectly fine password"

# One plugin whose dependency is missing, one whose settings are wrong.
NEEDY = "import surely_not_installed_module"
PORTCHECK = """
    import attrs
    from lunasentri_core import hookimpl

    @attrs.frozen
    class Settings:
        port: int = 22

    class PortCheck:
        name = "portcheck"
        settings_class = Settings
        def __init__(self, settings):
            self.settings = settings
        def collect(self, target):
            return []

    @hookimpl
    def lunasentri_register_collectors():
        return [PortCheck]
"""


def broken_plugins(make_distribution: MakeDistribution) -> None:
    make_distribution(
        "lunasentri-broken-pair",
        entry_points={"needy": "needy_plugin", "portcheck": "portcheck_plugin"},
        modules={"needy_plugin": NEEDY, "portcheck_plugin": PORTCHECK},
    )


def test_ready_reports_failed_plugins_and_stays_ready(
    make_distribution: MakeDistribution, make_server: MakeServer
) -> None:
    broken_plugins(make_distribution)
    server = make_server(plugin_settings={"portcheck": {"port": "hunter2"}})

    with server.client() as client:
        response = client.get("/healthz/ready")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"] == {"storage": "ok", "plugins": "degraded"}
    failed = {f["name"]: f for f in body["plugins"]["failed"]}
    assert failed["needy"]["stage"] == "missing-dependency"
    assert "surely_not_installed_module" in failed["needy"]["error"]
    # A settings error may quote the configured value: the public endpoint does not.
    assert failed["portcheck"] == {
        "name": "portcheck",
        "stage": "settings",
        "error": "invalid settings",
    }
    assert "hunter2" not in response.text


def test_ready_is_ok_when_every_plugin_loaded(make_server: MakeServer) -> None:
    with make_server().client() as client:
        body = client.get("/healthz/ready").json()

    assert body["status"] == "ok"
    assert body["checks"]["plugins"] == "ok"
    assert body["plugins"] == {"failed": []}


def test_admins_list_plugins_their_failures_and_stray_settings(
    make_distribution: MakeDistribution, make_server: MakeServer
) -> None:
    broken_plugins(make_distribution)
    tables = {"portcheck": {"port": "hunter2"}, "pstuil": {"per_cpu": True}}
    server = make_server(plugin_settings=tables, disabled_plugins=["wmi"])

    with server.client(server.login()) as client:
        response = client.get("/api/v1/plugins")

    assert response.status_code == 200, response.text
    report = response.json()
    psutil = next(p for p in report["plugins"] if p["name"] == "psutil")
    assert psutil["distribution"] == "lunasentri-psutil"
    assert psutil["components"] == ["collector:psutil"]
    assert "lunasentri_register_collectors" in psutil["hooks"]
    failures = {f["name"]: f for f in report["failures"]}
    assert failures["needy"]["stage"] == "missing-dependency"
    assert failures["needy"]["distribution"] == "lunasentri-broken-pair"
    assert failures["portcheck"]["reason"].startswith("invalid settings: plugins.portcheck.port:")
    assert report["disabled"] == ["wmi"]
    assert report["stray_settings"] == ["pstuil"]


def test_only_admins_list_plugins(make_server: MakeServer) -> None:
    server = make_server()
    with server.client(server.login()) as client:
        created = client.post("/api/v1/users", json={"username": "alice", "password": PASSWORD})
        assert created.status_code == 201, created.text

    with server.client(server.login("alice", PASSWORD)) as client:
        as_user = client.get("/api/v1/plugins")
    with server.client() as client:
        anonymous = client.get("/api/v1/plugins")

    assert as_user.status_code == 403
    assert as_user.json()["error"]["code"] == "forbidden"
    assert anonymous.status_code == 401
