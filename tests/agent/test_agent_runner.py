"""The agent's loops against a scripted server: delivery, backoff, bad batches, config, stop."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from lunasentri_core.agent.runner import Agent

if TYPE_CHECKING:
    from conftest import AgentKit

pytestmark = pytest.mark.anyio


async def run_until(agent: Agent, condition: Callable[[], bool], timeout: float = 10) -> None:
    """Run the agent until ``condition`` holds, then stop it gracefully."""
    async with anyio.create_task_group() as group:
        group.start_soon(agent.run)
        with anyio.fail_after(timeout):
            while not condition():
                await anyio.sleep(0.01)
        agent.stop()


def assert_nothing_lost(kit: AgentKit, agent: Agent) -> None:
    spooled = [json.loads(s.data)["metrics"]["stub.count"] for s in agent.spool.peek(10_000)]
    assert sorted(kit.server.counts() + spooled) == list(range(1, agent.stats.collected + 1))
    assert len(set(kit.server.counts())) == len(kit.server.counts())


async def test_delivers_what_it_collects(kit: AgentKit) -> None:
    async with kit.http() as http:
        agent = kit.agent(http)
        await run_until(agent, lambda: len(kit.server.samples) >= 3)
    assert agent.stats.delivered == len(kit.server.samples)
    assert_nothing_lost(kit, agent)
    request = kit.server.requests[-1]
    assert request.headers["authorization"] == "Bearer lsk_t"
    assert kit.collector.targets[0].machine_id == agent.identity.agent_id()


async def test_outage_backs_off_while_collection_goes_on(kit: AgentKit) -> None:
    kit.server.statuses = [503] * 4 + [500, 502]
    async with kit.http() as http:
        agent = kit.agent(http)
        await run_until(agent, lambda: len(kit.server.samples) >= 4)
    assert agent.stats.send_failures == 6
    assert_nothing_lost(kit, agent)
    # Samples piled up during the outage went out in batches, not one by one.
    assert max(kit.server.batches) > 1


async def test_unreachable_server_keeps_everything_spooled(kit: AgentKit) -> None:
    settings = kit.settings(server_url="http://127.0.0.1:9")
    async with httpx.AsyncClient(base_url="http://127.0.0.1:9") as http:
        agent = kit.agent(http, settings)
        await run_until(agent, lambda: agent.stats.send_failures >= 2 and len(agent.spool) >= 3)
    assert len(agent.spool) == agent.stats.collected
    assert "ConnectError" in (agent.stats.last_error or "")


async def test_retry_after_is_honoured(kit: AgentKit, caplog: pytest.LogCaptureFixture) -> None:
    kit.server.statuses = [429]
    kit.server.headers = {"retry-after": "30"}
    async with kit.http() as http:
        agent = kit.agent(http)
        await run_until(agent, lambda: "retrying in 30.0 s" in caplog.text)
    assert kit.server.samples == []
    assert len(agent.spool) >= 1


async def test_a_bad_sample_is_isolated_and_dead_lettered(kit: AgentKit) -> None:
    kit.server.reject = lambda samples: any(s["metrics"]["stub.count"] == 3 for s in samples)
    async with kit.http() as http:
        agent = kit.agent(http, kit.settings(batch_max_samples=4))
        for count in range(1, 7):
            agent.spool.append(json.dumps({"metrics": {"stub.count": count}}).encode())
        kit.collector.count = 6
        result = await agent.run_once()
    assert sorted(kit.server.counts()) == [1, 2, 4, 5, 6, 7]
    assert result.dead_lettered == 1
    assert result.remaining == 0
    assert not result.ok
    (dead,) = agent.spool.dead_dir.glob("*.json")
    record = json.loads(dead.read_text())
    assert record["samples"] == [{"metrics": {"stub.count": 3}}]
    assert "422" in record["reason"]


async def test_a_refused_key_keeps_the_spool(kit: AgentKit) -> None:
    kit.server.statuses = [401]
    async with kit.http() as http:
        agent = kit.agent(http)
        result = await agent.run_once()
    assert not result.ok
    assert result.remaining == 1
    assert result.dead_lettered == 0
    assert result.error == "HTTP 401: status 401"


async def test_once_without_a_key_keeps_the_sample(kit: AgentKit) -> None:
    async with kit.http() as http:
        agent = kit.agent(http, api_key="")
        result = await agent.run_once()
    assert result.error is not None
    assert "no API key" in result.error
    assert result.remaining == 1
    assert kit.server.requests == []


async def test_spool_resumes_after_a_restart(kit: AgentKit) -> None:
    kit.server.statuses = [503]
    async with kit.http() as http:
        first = await kit.agent(http).run_once()
        assert first.remaining == 1
        kit.collector.count = 1
        second = await kit.agent(http).run_once()
    assert second.ok
    assert second.delivered == 2
    assert kit.server.counts() == [1, 2]


async def test_collection_failures_do_not_stop_the_loop(
    kit: AgentKit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="lunasentri_core.agent")
    kit.collector = kit.make_collector(fail_on=frozenset({2, 3}))
    async with kit.http() as http:
        agent = kit.agent(http)
        await run_until(agent, lambda: len(kit.server.samples) >= 3)
    assert agent.stats.failed_collections == 2
    runner_lines = [r.getMessage() for r in caplog.records if r.name.endswith("runner")]
    assert runner_lines.count("collector stub failed: RuntimeError: failure 2") == 1
    assert "collector stub failed: RuntimeError: failure 3" not in runner_lines
    assert "collector stub works again" in runner_lines
    assert 2 not in kit.server.counts()
    assert 3 not in kit.server.counts()


async def test_central_config_is_applied_and_then_unchanged(kit: AgentKit) -> None:
    kit.server.config = {
        "interval": 2,
        "collectors": ["stub", "other"],
        "labels": {"env": "prod"},
        "version": 7,
    }
    async with kit.http() as http:
        agent = kit.agent(http, kit.settings(config_poll_interval=0.05))
        await run_until(
            agent,
            lambda: sum(r.headers.get("if-none-match") == '"7"' for r in kit.server.requests) >= 2,
        )
    assert agent.interval == 2.0
    assert kit.loads == [("stub",), ("stub", "other")]
    assert agent.target.labels == (("env", "prod"),)
    assert kit.collector.targets[-1].labels == (("env", "prod"),)
    config_requests = [r for r in kit.server.requests if r.url.path == "/api/v1/agent/config"]
    assert "if-none-match" not in config_requests[0].headers


async def test_unusable_central_collectors_keep_the_old_ones(
    kit: AgentKit, caplog: pytest.LogCaptureFixture
) -> None:
    kit.unknown = frozenset({"missing"})
    kit.server.config = {"interval": 5, "collectors": ["missing"], "labels": {}, "version": 1}
    async with kit.http() as http:
        agent = kit.agent(http, kit.settings(config_poll_interval=0.05))
        await run_until(
            agent,
            lambda: sum(r.headers.get("if-none-match") == '"1"' for r in kit.server.requests) >= 2,
        )
    assert agent.collector_names == ("stub",)
    assert agent.interval == 5  # the rest of the configuration applies
    assert caplog.text.count("unusable collectors") == 1


async def test_a_faster_central_interval_takes_effect_at_once(kit: AgentKit) -> None:
    async with kit.http() as http:
        agent = kit.agent(http, kit.settings(interval=3600, config_poll_interval=0.05))
        async with anyio.create_task_group() as group:
            group.start_soon(agent.run)
            with anyio.fail_after(10):
                while agent.stats.collected < 1:
                    await anyio.sleep(0.01)
                kit.server.config = {"interval": 1, "collectors": ["stub"], "version": 2}
                # Without the change, the next sample would be an hour away.
                while agent.stats.collected < 2:
                    await anyio.sleep(0.01)
            agent.stop()


async def test_stop_lets_the_send_in_flight_finish(kit: AgentKit) -> None:
    arrived, release = anyio.Event(), anyio.Event()

    async def hold(request: httpx.Request) -> None:
        arrived.set()
        await release.wait()

    kit.server.before_ingest = hold
    async with kit.http() as http:
        agent = kit.agent(http, kit.settings(interval=3600))
        async with anyio.create_task_group() as group:
            group.start_soon(agent.run)
            with anyio.fail_after(10):
                await arrived.wait()
            agent.stop()
            release.set()
    assert kit.server.counts() == [1]
    assert len(agent.spool) == 0


async def test_server_defaults_leave_local_settings_alone(kit: AgentKit) -> None:
    kit.server.config = {"interval": 30, "collectors": ["other"], "labels": {}, "version": 0}
    async with kit.http() as http:
        agent = kit.agent(http, kit.settings(config_poll_interval=0.05))
        await run_until(agent, lambda: len(kit.server.requests) >= 3)
        assert agent.interval == 0.05
        assert agent.collector_names == ("stub",)

        # A stored configuration applies; removing it brings the local settings back.
        kit.server.config = {"interval": 30, "collectors": ["other"], "labels": {}, "version": 3}
        await agent._refresh_config()
        assert agent.interval == 30
        assert agent.collector_names == ("other",)
        kit.server.config = {"interval": 30, "collectors": ["other"], "labels": {}, "version": 0}
        await agent._refresh_config()
        assert agent.interval == 0.05
        assert agent.collector_names == ("stub",)


async def test_the_first_sample_goes_at_once_and_later_ones_together(kit: AgentKit) -> None:
    async with kit.http() as http:
        agent = kit.agent(http, kit.settings(interval=0.05, send_interval=0.5))
        await run_until(agent, lambda: len(kit.server.batches) >= 2)
    assert kit.server.batches[0] == 1
    assert kit.server.batches[1] > 1
    assert_nothing_lost(kit, agent)


async def test_a_backlog_goes_out_without_waiting(kit: AgentKit) -> None:
    async with kit.http() as http:
        agent = kit.agent(
            http, kit.settings(interval=3600, send_interval=3600, batch_max_samples=3)
        )
        for count in range(100, 107):
            agent.spool.append(json.dumps({"metrics": {"stub.count": count}}).encode())
        await run_until(agent, lambda: len(agent.spool) < 3)
    assert kit.server.batches[:2] == [3, 3]


async def test_a_failing_disk_loses_samples_not_the_agent(
    kit: AgentKit, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with kit.http() as http:
        agent = kit.agent(http)
        real_append = agent.spool.append
        failures = iter([OSError(28, "No space left on device")] * 3)

        def append(data: bytes) -> int:
            error = next(failures, None)
            if error is not None:
                raise error
            return real_append(data)

        monkeypatch.setattr(agent.spool, "append", append)
        await run_until(agent, lambda: len(kit.server.samples) >= 2)
    assert agent.stats.lost == 3
    assert caplog.text.count("cannot spool a sample") == 1
    assert "spooling works again; 3 sample(s) were lost" in caplog.text
    assert kit.server.counts()[0] == 4
