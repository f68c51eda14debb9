"""Fixtures shared by the core tests."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Test timings are no assertions here: on a loaded 2-core CI machine an example may
# take longer than Hypothesis's 200 ms deadline, which would fail a correct test.
settings.register_profile("lunasentri", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lunasentri")

MakeDistribution = Callable[..., Path]


@pytest.fixture
def make_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MakeDistribution]:
    """Install a throwaway distribution (dist-info + modules) on ``sys.path``.

    The entry points it declares are found by ``importlib.metadata`` exactly as an
    installed wheel's would be, so plugin discovery is exercised for real.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(
        name: str,
        *,
        entry_points: Mapping[str, str],
        modules: Mapping[str, str],
        version: str = "1.0",
        requires: Sequence[str] = (),
    ) -> Path:
        dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {line}\n" for line in requires)
        )
        lines = ["[lunasentri]", *(f"{k} = {v}" for k, v in entry_points.items())]
        (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            created.append(module)
        importlib.invalidate_caches()
        return site

    yield make
    for module in created:
        sys.modules.pop(module, None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
