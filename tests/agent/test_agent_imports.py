"""What the agent loads, and the lazy package exports that keep it small.

``lunasentri_core`` resolves its public names on first use (PEP 562), so a
process that needs ``Reading`` does not pay for the hub, the codec or the
storage layer. These tests pin both halves: the exports behave like plain
imports, and a running agent loads none of what it does not use — neither the
server's model, settings and codec (with cattrs), nor an event loop, nor
importlib.metadata (docs/benchmarks.md says what each costs).
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lunasentri_core

INIT = Path(lunasentri_core.__file__)

HEAVY = ("sqlalchemy", "starlette", "uvicorn", "prometheus_client", "alembic", "lunasentri_sqlite")
"""Server and storage dependencies: megabytes an agent never uses."""
UNUSED_CORE = (
    "lunasentri_core.hub",
    "lunasentri_core.server",
    "lunasentri_core.storage",
    "lunasentri_core.services.writer",
    "lunasentri_core.services.alerts",
    "lunasentri_core.security",
    "lunasentri_core.agent.claim",
)
"""Core modules an agent started with an API key has no use for."""
SERVER_ONLY = (
    "lunasentri_core.model",
    "lunasentri_core.components",
    "lunasentri_core.codec",
    "lunasentri_core.config",
    "lunasentri_core.services",
    "cattrs",
    "asyncio",
)
"""What the server needs and a collecting process does not: the model beyond the
collectors' classes, the full settings, the codec and an event loop."""
ANYIO_AT_WORK = ("anyio._core", "anyio._backends", "anyio.abc", "anyio.to_thread")
"""httpcore imports the ``anyio`` package itself, a lazy shell (anyio 4): these
modules would mean an event loop or worker threads of anyio's."""


def _type_checking_imports() -> dict[str, str]:
    """Name -> module of the ``if TYPE_CHECKING:`` imports in ``__init__.py``."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    return {
        alias.name: node.module or ""
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_all_the_export_table_and_the_type_checking_imports_agree() -> None:
    table = lunasentri_core._EXPORTS
    assert sorted(lunasentri_core.__all__) == sorted([*table, "__version__"])
    assert len(set(lunasentri_core.__all__)) == len(lunasentri_core.__all__)
    assert _type_checking_imports() == table


@pytest.mark.parametrize("name", sorted(lunasentri_core._EXPORTS))
def test_every_export_is_the_object_its_module_defines(name: str) -> None:
    module = importlib.import_module(lunasentri_core._EXPORTS[name])
    assert getattr(lunasentri_core, name) is getattr(module, name)
    assert name in dir(lunasentri_core)


def test_version_and_unknown_names() -> None:
    assert isinstance(lunasentri_core.__version__, str)
    assert lunasentri_core.__version__
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        _ = lunasentri_core.NoSuchName  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        exec("from lunasentri_core import NoSuchName", {})


def _modules_after(script: str, **env: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``script``."""
    code = textwrap.dedent(script) + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))\n"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**clean, **env},
    )
    return set(result.stdout.split())


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(f"{n}.") for n in names))


def test_a_collector_plugin_import_loads_only_the_collectors_classes() -> None:
    modules = _modules_after(
        "from lunasentri_core import Collector, ConfigError, Reading, Sample, Target, hookimpl"
    )
    assert "lunasentri_core.samples" in modules
    assert _loaded(modules, (*HEAVY, *UNUSED_CORE, *SERVER_ONLY, "anyio")) == []


def test_star_import_still_gives_every_name() -> None:
    namespace: dict[str, object] = {}
    exec("from lunasentri_core import *", namespace)
    assert set(lunasentri_core.__all__) <= set(namespace)


def test_a_running_agent_loads_no_server_storage_or_claim_code(tmp_path: Path) -> None:
    """The whole command, as ``lunasentri agent --once`` runs it, minus what it never uses."""
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\nserver_url = 'http://127.0.0.1:9'\napi_key = 'lsk_x'\n")
    modules = _modules_after(
        f"""
        import click
        from lunasentri_core.cli import main
        args = ["--config", {str(config)!r}, "agent", "--once"]
        try:
            main(args, standalone_mode=False, obj=None)
        except click.ClickException as error:
            assert "not delivered" in error.message, error.message
        else:
            raise AssertionError("a sample reached the unreachable server")
        """,
        LUNASENTRI_DATA_DIR=str(tmp_path / "data"),
    )
    # It did run: collectors, spool and HTTP client were all loaded.
    assert {"lunasentri_psutil", "lunasentri_core.agent.runner", "httpcore"} <= modules
    assert _loaded(modules, (*HEAVY, *UNUSED_CORE, *SERVER_ONLY, *ANYIO_AT_WORK)) == []
    assert "importlib.metadata" not in modules
