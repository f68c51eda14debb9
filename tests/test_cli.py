"""The ``lunasentri`` command, run as a user runs it: a subprocess of the installed script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

MakeDistribution = Callable[..., Path]


def lunasentri(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    script = shutil.which("lunasentri", path=os.path.dirname(sys.executable))
    command = [script] if script else [sys.executable, "-m", "lunasentri_core.cli"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_")}
    full_env.update(env or {})
    if env and "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):
        # Keep the caller's path too: it may put the code under test first.
        full_env["PYTHONPATH"] = os.pathsep.join((env["PYTHONPATH"], os.environ["PYTHONPATH"]))
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120
    )


def test_plugins_lists_first_party_plugins() -> None:
    result = lunasentri("plugins")

    assert result.returncode == 0, result.stderr
    assert "collector:psutil" in result.stdout
    assert "storage:sqlite" in result.stdout
    assert "lunasentri-psutil" in result.stdout


def test_plugins_with_storage_shows_the_configured_backend(tmp_path: Path) -> None:
    env = {"LUNASENTRI_DATA_DIR": str(tmp_path)}
    assert lunasentri("db", "migrate", env=env).returncode == 0

    table = lunasentri("plugins", "--storage", env=env)
    as_json = lunasentri("plugins", "--storage", "--json", env=env)

    assert table.returncode == 0, table.stderr
    assert f"storage: sqlite:///{tmp_path}/lunasentri.db" in table.stdout
    assert "  backend sqlite\n" in table.stdout  # one way of working: no mode
    assert "capabilities: concurrent-writers, retention, rollups, series-limit" in table.stdout
    storage = json.loads(as_json.stdout)["storage"]
    assert storage["backend"] == "sqlite"
    assert storage["mode"] is None


def test_plugins_with_storage_says_why_it_cannot_open_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/missing/x.db"

    result = lunasentri("plugins", "--storage", env={"LUNASENTRI_STORAGE__URL": url})

    assert result.returncode == 1
    assert "cannot open it:" in result.stdout
    assert "does not exist" in result.stdout
    assert "storage:sqlite" in result.stdout  # the plugins are listed all the same


def test_plugins_reports_a_plugin_that_raises_at_import(
    make_distribution: MakeDistribution,
) -> None:
    site = make_distribution(
        "lunasentri-exploding",
        entry_points={"exploding": "exploding_plugin"},
        modules={"exploding_plugin": "raise ImportError('cannot load libfoo.so')"},
    )

    result = lunasentri("plugins", "--json", env={"PYTHONPATH": str(site)})

    assert result.returncode == 1, result.stderr
    assert "plugins failed to load: exploding" in result.stderr
    report = json.loads(result.stdout)
    assert {
        "name": "exploding",
        "reason": "ImportError: cannot load libfoo.so",
        "stage": "import",
        "distribution": "lunasentri-exploding",
    } in report["failures"]
    assert {"psutil", "sqlite"} <= {p["name"] for p in report["plugins"]}
    assert "Traceback" not in result.stderr


def test_plugins_list_only_lists_failures_and_exits_0(make_distribution: MakeDistribution) -> None:
    site = make_distribution(
        "lunasentri-needy",
        entry_points={"needy": "needy_plugin"},
        modules={"needy_plugin": "import surely_not_installed_module"},
    )
    env = {"PYTHONPATH": str(site)}

    failing = lunasentri("plugins", env=env)
    listed = lunasentri("plugins", "--list-only", env=env)

    assert failing.returncode == 1
    for result in (failing, listed):
        assert "needy [missing-dependency]: missing dependency" in result.stdout
        assert "collector:psutil" in result.stdout
    assert "WARNING lunasentri_core.plugins: plugin needy skipped" in failing.stderr
    assert listed.returncode == 0, listed.stderr
    assert "plugins failed to load" not in listed.stderr


def test_plugins_lists_a_settings_table_naming_no_component(tmp_path: Path) -> None:
    config = tmp_path / "lunasentri.toml"
    config.write_text("[plugins.pstuil]\nper_cpu = true\n")

    table = lunasentri("--config", str(config), "plugins")
    as_json = lunasentri("--config", str(config), "plugins", "--json", "--list-only")

    assert table.returncode == 1
    assert "settings tables naming no loaded component" in table.stdout
    assert "  [plugins.pstuil]\n" in table.stdout
    assert "settings tables name no loaded component: [plugins.pstuil]" in table.stderr
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["stray_settings"] == ["pstuil"]


def test_serve_with_strict_plugins_refuses_a_stray_table_before_touching_data(
    tmp_path: Path,
) -> None:
    config = tmp_path / "lunasentri.toml"
    data = tmp_path / "data"
    config.write_text(
        f'strict_plugins = true\ndata_dir = "{data}"\nadmin_password = "long enough pw"\n'
        "[server]\nport = 0\n[plugins.pstuil]\nper_cpu = true\n"
    )

    result = lunasentri("--config", str(config), "serve")

    assert result.returncode == 1
    assert "Error: [plugins.pstuil] names no loaded component" in result.stderr
    assert "loaded components: " in result.stderr
    assert "psutil" in result.stderr
    assert not data.exists()


def test_disabled_plugins_are_shown_as_disabled(tmp_path: Path) -> None:
    result = lunasentri("plugins", env={"LUNASENTRI_DISABLED_PLUGINS": '["psutil"]'})

    assert result.returncode == 0, result.stderr
    assert "disabled by settings: psutil" in result.stdout
    assert "collector:psutil" not in result.stdout


def test_collect_once_prints_this_machines_metrics() -> None:
    result = lunasentri("collect", "--once")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["metric", "labels", "value"]
    metrics = {line.split()[0] for line in lines[3:]}
    assert {"cpu.percent", "mem.total", "mem.used", "disk.total", "proc.count"} <= metrics
    assert "mount=/" in result.stdout


def test_collect_once_json_is_a_decodable_sample() -> None:
    from lunasentri_core.codec import decode_json
    from lunasentri_core.model import Sample

    result = lunasentri("collect", "--once", "--json")

    assert result.returncode == 0, result.stderr
    sample = decode_json(result.stdout, Sample)
    assert any(r.metric == "mem.total" and r.value > 0 for r in sample.readings)


def test_db_migrate_creates_the_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    result = lunasentri("db", "migrate", env={"LUNASENTRI_DATA_DIR": str(data_dir)})
    again = lunasentri("db", "migrate", env={"LUNASENTRI_DATA_DIR": str(data_dir)})

    assert result.returncode == 0, result.stderr
    assert "is up to date" in result.stdout
    assert again.returncode == 0, again.stderr
    assert (data_dir / "lunasentri.db").is_file()


def test_a_missing_database_directory_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/missing/dir/x.db"

    result = lunasentri("db", "migrate", env={"LUNASENTRI_STORAGE__URL": url})

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{tmp_path}/missing/dir" in result.stderr
    assert "does not exist" in result.stderr


def test_a_wrong_setting_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "lunasentri.toml"
    config.write_text("[collect]\ninterval = 'often'\n")

    result = lunasentri("--config", str(config), "collect", "--once")

    assert result.returncode == 1
    assert "collect.interval: expected a duration" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--port", "99999"), {}, "'--port': 99999 is not in the range 0<=x<=65535"),
        ((), {"LUNASENTRI_SERVER__PORT": "70000"}, "server.port: expected a TCP port"),
        ((), {"LUNASENTRI_LOG_LEVEL": "verbose"}, "log_level: expected one of debug"),
    ],
)
def test_serve_refuses_a_wrong_port_or_level_by_name(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = lunasentri("serve", "--data-dir", str(tmp_path), *args, env=env)

    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_collector_is_a_clear_error() -> None:
    result = lunasentri("collect", "--once", "--collector", "nosuch")

    assert result.returncode == 1
    assert "no collector named 'nosuch'" in result.stderr


@pytest.mark.parametrize("args", [("--help",), ("db", "--help"), ("--version",)])
def test_help_and_version(args: tuple[str, ...]) -> None:
    assert lunasentri(*args).returncode == 0
