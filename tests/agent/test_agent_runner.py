"""The agent's loops against a scripted server: delivery, backoff, bad batches, config, stop."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from lunasentri_core.agent.runner import Agent

if TYPE_CHECKING:
    from conftest import AgentKit


@contextlib.contextmanager
def running(agent: Agent) -> Iterator[None]:
    """The agent runs in a thread meanwhile; then it is stopped gracefully."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            agent.run(handle_signals=False)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        agent.stop()
        thread.join(10)
    assert not thread.is_alive(), "the agent did not stop"
    if errors:
        raise errors[0]


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def run_until(agent: Agent, condition: Callable[[], bool], timeout: float = 10) -> None:
    """Run the agent until ``condition`` holds, then stop it gracefully."""
    with running(agent):
        wait_for(condition, timeout)


def assert_nothing_lost(kit: AgentKit, agent: Agent) -> None:
    spooled = [json.loads(s.data)["metrics"]["stub.count"] for s in agent.spool.peek(10_000)]
    assert sorted(kit.server.counts() + spooled) == list(range(1, agent.stats.collected + 1))
    assert len(set(kit.server.counts())) == len(kit.server.counts())


def test_delivers_what_it_collects(kit: AgentKit) -> None:
    with kit.http() as http:
        agent = kit.agent(http)
        run_until(agent, lambda: len(kit.server.samples) >= 3)
    assert agent.stats.delivered == len(kit.server.samples)
    assert_nothing_lost(kit, agent)
    request = kit.server.requests[-1]
    assert request.headers["authorization"] == "Bearer lsk_t"
    assert kit.collector.targets[0].machine_id == agent.identity.agent_id()


def test_outage_backs_off_while_collection_goes_on(kit: AgentKit) -> None:
    kit.server.statuses = [503] * 4 + [500, 502]
    with kit.http() as http:
        agent = kit.agent(http)
        run_until(agent, lambda: len(kit.server.samples) >= 4)
    assert agent.stats.send_failures == 6
    assert_nothing_lost(kit, agent)
    # Samples piled up during the outage went out in batches, not one by one.
    assert max(kit.server.batches) > 1


def test_unreachable_server_keeps_everything_spooled(kit: AgentKit) -> None:
    settings = kit.settings(server_url="http://127.0.0.1:9")
    with httpx.Client(base_url="http://127.0.0.1:9") as http:
        agent = kit.agent(http, settings)
        run_until(agent, lambda: agent.stats.send_failures >= 2 and len(agent.spool) >= 3)
    assert len(agent.spool) == agent.stats.collected
    assert "ConnectError" in (agent.stats.last_error or "")


def test_retry_after_is_honoured(kit: AgentKit, caplog: pytest.LogCaptureFixture) -> None:
    kit.server.statuses = [429]
    kit.server.headers = {"retry-after": "30"}
    with kit.http() as http:
        agent = kit.agent(http)
        run_until(agent, lambda: "retrying in 30.0 s" in caplog.text)
    assert kit.server.samples == []
    assert len(agent.spool) >= 1


def test_a_bad_sample_is_isolated_and_dead_lettered(kit: AgentKit) -> None:
    kit.server.reject = lambda samples: any(s["metrics"]["stub.count"] == 3 for s in samples)
    with kit.http() as http:
        agent = kit.agent(http, kit.settings(batch_max_samples=4))
        for count in range(1, 7):
            agent.spool.append(json.dumps({"metrics": {"stub.count": count}}).encode())
        kit.collector.count = 6
        result = agent.run_once()
    assert sorted(kit.server.counts()) == [1, 2, 4, 5, 6, 7]
    assert result.dead_lettered == 1
    assert result.remaining == 0
    assert not result.ok
    (dead,) = agent.spool.dead_dir.glob("*.json")
    record = json.loads(dead.read_text())
    assert record["samples"] == [{"metrics": {"stub.count": 3}}]
    assert "422" in record["reason"]


def test_a_refused_key_keeps_the_spool(kit: AgentKit) -> None:
    kit.server.statuses = [401]
    with kit.http() as http:
        agent = kit.agent(http)
        result = agent.run_once()
    assert not result.ok
    assert result.remaining == 1
    assert result.dead_lettered == 0
    assert result.error == "HTTP 401: status 401"


def test_once_without_a_key_keeps_the_sample(kit: AgentKit) -> None:
    with kit.http() as http:
        agent = kit.agent(http, api_key="")
        result = agent.run_once()
    assert result.error is not None
    assert "no API key" in result.error
    assert result.remaining == 1
    assert kit.server.requests == []


def test_spool_resumes_after_a_restart(kit: AgentKit) -> None:
    kit.server.statuses = [503]
    with kit.http() as http:
        first = kit.agent(http).run_once()
        assert first.remaining == 1
        kit.collector.count = 1
        second = kit.agent(http).run_once()
    assert second.ok
    assert second.delivered == 2
    assert kit.server.counts() == [1, 2]


def test_collection_failures_do_not_stop_the_loop(
    kit: AgentKit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="lunasentri_core.agent")
    kit.collector = kit.make_collector(fail_on=frozenset({2, 3}))
    with kit.http() as http:
        agent = kit.agent(http)
        run_until(agent, lambda: len(kit.server.samples) >= 3)
    assert agent.stats.failed_collections == 2
    runner_lines = [r.getMessage() for r in caplog.records if r.name.endswith("runner")]
    assert runner_lines.count("collector stub failed: RuntimeError: failure 2") == 1
    assert "collector stub failed: RuntimeError: failure 3" not in runner_lines
    assert "collector stub works again" in runner_lines
    assert 2 not in kit.server.counts()
    assert 3 not in kit.server.counts()


def test_central_config_is_applied_and_then_unchanged(kit: AgentKit) -> None:
    kit.server.config = {
        "interval": 2,
        "collectors": ["stub", "other"],
        "labels": {"env": "prod"},
        "version": 7,
    }
    with kit.http() as http:
        agent = kit.agent(http, kit.settings(config_poll_interval=0.05))
        run_until(
            agent,
            lambda: sum(r.headers.get("if-none-match") == '"7"' for r in kit.server.requests) >= 2,
        )
    assert agent.interval == 2.0
    assert kit.loads == [("stub",), ("stub", "other")]
    assert agent.target.labels == (("env", "prod"),)
    assert kit.collector.targets[-1].labels == (("env", "prod"),)
    config_requests = [r for r in kit.server.requests if r.url.path == "/api/v1/agent/config"]
    assert "if-none-match" not in config_requests[0].headers


def test_unusable_central_collectors_keep_the_old_ones(
    kit: AgentKit, caplog: pytest.LogCaptureFixture
) -> None:
    kit.unknown = frozenset({"missing"})
    kit.server.config = {"interval": 5, "collectors": ["missing"], "labels": {}, "version": 1}
    with kit.http() as http:
        agent = kit.agent(http, kit.settings(config_poll_interval=0.05))
        run_until(
            agent,
            lambda: sum(r.headers.get("if-none-match") == '"1"' for r in kit.server.requests) >= 2,
        )
    assert agent.collector_names == ("stub",)
    assert agent.interval == 5  # the rest of the configuration applies
    assert caplog.text.count("unusable collectors") == 1


def test_a_faster_central_interval_takes_effect_at_once(kit: AgentKit) -> None:
    with kit.http() as http:
        agent = kit.agent(http, kit.settings(interval=3600, config_poll_interval=0.05))
        with running(agent):
            wait_for(lambda: agent.stats.collected >= 1)
            kit.server.config = {"interval": 1, "collectors": ["stub"], "version": 2}
            # Without the change, the next sample would be an hour away.
            wait_for(lambda: agent.stats.collected >= 2)


def test_stop_lets_the_send_in_flight_finish(kit: AgentKit) -> None:
    arrived, release = threading.Event(), threading.Event()

    def hold(request: httpx.Request) -> None:
        arrived.set()
        assert release.wait(10)

    kit.server.before_ingest = hold
    with kit.http() as http:
        agent = kit.agent(http, kit.settings(interval=3600))
        with running(agent):
            assert arrived.wait(10)
            agent.stop()
            release.set()
    assert kit.server.counts() == [1]
    assert len(agent.spool) == 0


def test_server_defaults_leave_local_settings_alone(kit: AgentKit) -> None:
    kit.server.config = {"interval": 30, "collectors": ["other"], "labels": {}, "version": 0}
    with kit.http() as http:
        agent = kit.agent(http, kit.settings(config_poll_interval=0.05))
        run_until(agent, lambda: len(kit.server.requests) >= 3)
        assert agent.interval == 0.05
        assert agent.collector_names == ("stub",)

        # A stored configuration applies; removing it brings the local settings back.
        kit.server.config = {"interval": 30, "collectors": ["other"], "labels": {}, "version": 3}
        agent._refresh_config()
        assert agent.interval == 30
        assert agent.collector_names == ("other",)
        kit.server.config = {"interval": 30, "collectors": ["other"], "labels": {}, "version": 0}
        agent._refresh_config()
        assert agent.interval == 0.05
        assert agent.collector_names == ("stub",)


def test_the_first_sample_goes_at_once_and_later_ones_together(kit: AgentKit) -> None:
    with kit.http() as http:
        agent = kit.agent(http, kit.settings(interval=0.05, send_interval=0.5))
        run_until(agent, lambda: len(kit.server.batches) >= 2)
    assert kit.server.batches[0] == 1
    assert kit.server.batches[1] > 1
    assert_nothing_lost(kit, agent)


def test_a_backlog_goes_out_without_waiting(kit: AgentKit) -> None:
    with kit.http() as http:
        agent = kit.agent(
            http, kit.settings(interval=3600, send_interval=3600, batch_max_samples=3)
        )
        for count in range(100, 107):
            agent.spool.append(json.dumps({"metrics": {"stub.count": count}}).encode())
        run_until(agent, lambda: len(agent.spool) < 3)
    assert kit.server.batches[:2] == [3, 3]


def test_a_failing_disk_loses_samples_not_the_agent(
    kit: AgentKit, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kit.http() as http:
        agent = kit.agent(http)
        real_append = agent.spool.append
        failures = iter([OSError(28, "No space left on device")] * 3)

        def append(data: bytes) -> int:
            error = next(failures, None)
            if error is not None:
                raise error
            return real_append(data)

        monkeypatch.setattr(agent.spool, "append", append)
        run_until(agent, lambda: len(kit.server.samples) >= 2)
    assert agent.stats.lost == 3
    assert caplog.text.count("cannot spool a sample") == 1
    assert "spooling works again; 3 sample(s) were lost" in caplog.text
    assert kit.server.counts()[0] == 4


def test_claim_mode_collects_while_it_waits_and_sends_once_claimed(kit: AgentKit) -> None:
    polls: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/agents/register":
            return httpx.Response(201, json={"status": "pending"})
        if request.url.path == "/api/v1/agents/claim-status":
            polls.append(request)
            if len(polls) < 5:
                return httpx.Response(200, json={"status": "pending"})
            return httpx.Response(200, json={"status": "claimed", "api_key": "lsk_claimed"})
        return kit.server.handle(request)

    with httpx.Client(transport=httpx.MockTransport(handle), base_url="http://server") as http:
        agent = kit.agent(http, kit.settings(send_interval=3600), api_key="")
        run_until(agent, lambda: len(kit.server.samples) >= 1)
    assert agent.identity.api_key() == "lsk_claimed"
    assert kit.server.requests[0].headers["authorization"] == "Bearer lsk_claimed"
    # Everything collected during the five polls went out in the first batch.
    assert kit.server.batches[0] >= 3
    assert_nothing_lost(kit, agent)
