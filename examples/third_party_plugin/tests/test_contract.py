"""The contract suites of the LunaSentri test kit, run against this plugin."""

from __future__ import annotations

from pathlib import Path

import pytest
from lunasentri_core.testing import CollectorContract, EntryPointContract

from lunasentri_filesize import FileSizeCollector, FileSizeSettings


class TestFileSizeCollector(CollectorContract):
    """Everything the hub relies on: name, settings, readings, threads, registration."""

    @pytest.fixture
    def collector(self, tmp_path: Path) -> FileSizeCollector:
        (tmp_path / "small.log").write_text("hello\n")
        (tmp_path / "empty.db").touch()
        paths = [str(tmp_path / name) for name in ("small.log", "empty.db", "missing.txt")]
        return FileSizeCollector(FileSizeSettings(paths=tuple(paths)))


class TestFileSizeEntryPoint(EntryPointContract):
    """Installed with ``pip install -e .``, the plugin is found through its entry point."""

    plugin = "filesize"
    distribution = "lunasentri-filesize"
    components = frozenset({"collector:filesize"})
