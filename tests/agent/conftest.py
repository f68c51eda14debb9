"""A stand-in collector and a scripted ingest endpoint for agent unit tests.

End-to-end tests against the real server live in tests/server/test_agent_e2e.py.
"""

from __future__ import annotations

import gzip
import importlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import httpx
import pytest

from lunasentri_core.agent.identity import Identity
from lunasentri_core.agent.runner import Agent
from lunasentri_core.agent.settings import AgentRunSettings, load_agent_settings
from lunasentri_core.agent.spool import Spool
from lunasentri_core.errors import PluginError
from lunasentri_core.samples import Reading, Target


class StubCollector:
    """Counts up; raises for the counts in ``fail_on``."""

    name: ClassVar[str] = "stub"
    settings_class: ClassVar[type[Any] | None] = None

    def __init__(self, fail_on: frozenset[int] = frozenset(), metric: str = "stub.count") -> None:
        self.metric = metric
        self.count = 0
        self.fail_on = fail_on
        self.targets: list[Target] = []

    def collect(self, target: Target) -> list[Reading]:
        self.count += 1
        self.targets.append(target)
        if self.count in self.fail_on:
            raise RuntimeError(f"failure {self.count}")
        return [Reading(self.metric, self.count)]


Handler = Callable[[httpx.Request], httpx.Response | None]


@attrs.define
class FakeServer:
    """Accepts ingests (or answers from ``statuses``) and serves a central config."""

    statuses: list[int] = attrs.field(factory=list)
    headers: Mapping[str, str] = attrs.field(factory=dict)
    reject: Callable[[list[dict[str, Any]]], bool] = lambda samples: False
    config: dict[str, Any] | None = None
    before_ingest: Handler | None = None
    samples: list[dict[str, Any]] = attrs.field(factory=list)
    batches: list[int] = attrs.field(factory=list)
    requests: list[httpx.Request] = attrs.field(factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/api/v1/agent/config":
            return self._config(request)
        assert request.url.path == "/api/v1/ingest"
        if self.before_ingest is not None:
            result = self.before_ingest(request)
            if result is not None:
                return result
        samples = json.loads(gzip.decompress(request.content))["samples"]
        self.batches.append(len(samples))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200 and self.reject(samples):
            status = 422
        if status != 200:
            error = {"error": {"code": "nope", "message": f"status {status}"}}
            return httpx.Response(status, json=error, headers=dict(self.headers))
        self.samples.extend(samples)
        return httpx.Response(200, json={"accepted": len(samples)})

    def _config(self, request: httpx.Request) -> httpx.Response:
        if self.config is None:
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "none"}})
        etag = f'"{self.config["version"]}"'
        if request.headers.get("if-none-match") == etag:
            return httpx.Response(304)
        return httpx.Response(200, json=self.config, headers={"etag": etag})

    def counts(self) -> list[int]:
        return [s["metrics"]["stub.count"] for s in self.samples]


@attrs.define
class AgentKit:
    tmp_path: Path
    server: FakeServer = attrs.field(factory=FakeServer)
    loads: list[tuple[str, ...]] = attrs.field(factory=list)
    collector: StubCollector = attrs.field(factory=StubCollector)
    unknown: frozenset[str] = frozenset()
    """Collector names ``load`` refuses, like a missing plugin."""

    def settings(self, **agent: Any) -> AgentRunSettings:
        options = {
            "server_url": "http://server",
            "collectors": ["stub"],
            "interval": 0.05,
            "backoff_max": 0.05,
            "send_interval": 0.05,
            **agent,
        }
        return load_agent_settings(environ={}, data_dir=self.tmp_path / "data", agent=options)

    def make_collector(self, **options: Any) -> StubCollector:
        return StubCollector(**options)

    def http(self) -> httpx.Client:
        return httpx.Client(
            transport=httpx.MockTransport(self.server.handle), base_url="http://server"
        )

    def load(self, settings: AgentRunSettings, names: tuple[str, ...]) -> dict[str, StubCollector]:
        if self.unknown & set(names):
            raise PluginError(f"no collector named {sorted(self.unknown & set(names))[0]!r}")
        self.loads.append(tuple(names))
        return {
            name: self.collector if name == "stub" else StubCollector(metric=f"{name}.count")
            for name in names
        }

    def agent(
        self, http: httpx.Client, settings: AgentRunSettings | None = None, api_key: str = "lsk_t"
    ) -> Agent:
        settings = settings or self.settings()
        directory = settings.spool_dir
        return Agent(
            settings,
            spool=Spool.open(directory, settings.agent.spool_max_bytes),
            identity=Identity(directory),
            http=http,
            version="1.0",
            api_key=api_key,
            announce=lambda *_: None,
            load=self.load,
        )


@pytest.fixture
def kit(tmp_path: Path) -> AgentKit:
    return AgentKit(tmp_path)


class Site:
    """Two directories put first on sys.path, for distributions made up by a test."""

    def __init__(self, root: Path) -> None:
        self.first, self.second = root / "first", root / "second"
        self.first.mkdir()
        self.second.mkdir()

    def distribution(
        self, where: Path, directory: str, name: str, version: str, entry_points: str
    ) -> None:
        meta = where / directory
        meta.mkdir()
        metadata = "PKG-INFO" if directory.endswith(".egg-info") else "METADATA"
        (meta / metadata).write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nName: not a header\n"
        )
        (meta / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path)
    sys.path[:0] = [str(made.first), str(made.second)]
    importlib.invalidate_caches()
    yield made
    sys.path.remove(str(made.first))
    sys.path.remove(str(made.second))
    importlib.invalidate_caches()
    for name in [m for m in sys.modules if m.startswith("made_up")]:
        del sys.modules[name]
