"""Benchmark: ingest throughput with 100 active alert rules against none, in one run.

By default over HTTP, as the reference server ingests (the load of
``bench_ingest_http.py``): a real ``lunasentri serve`` on loopback, 8 agents
posting 1,000-reading requests back to back, in windows that alternate between
no rules and 100 rules made through the API; each side keeps its best window.
Evaluation may not fall behind unnoticed: a batch is queued for it on commit,
and a full queue holds back the next commit (and so the acknowledgements).

``--in-process`` measures the same through ``Sentri.ingest`` without HTTP,
where evaluation is a far larger share of the work: a round counts as done when
every batch is committed *and* evaluated.

The 100 rules are what a fleet's owner writes: on CPU (per core and total),
memory, swap and disk percentages (derived at evaluation time from used/total),
load, processes and network rates, scoped to all machines, to labels or to one
machine, with and without a for-duration. Readings look like a healthy fleet's,
with rare spikes past the thresholds (``SPIKES``, a share of readings: 1 in
10,000 by default), so most evaluations change nothing and some do: pending,
firing and resolved are written with their outbox entries.

    python benchmarks/bench_alert_ingest.py [--duration 8] [--rounds 4] [--agents 8]
    python benchmarks/bench_alert_ingest.py --in-process [--rounds 6] [--batches 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import _common as c
import _server
import anyio
import attrs
import bench_ingest_http as http_bench
import httpx

from lunasentri_core import MachineSamples, Reading, Sample, Sentri, Settings, User
from lunasentri_core.model import (
    AlertRule,
    Comparison,
    Machine,
    Role,
    RuleScope,
    Severity,
    new_id,
)

TARGET = 0.8
SPIKES = float(os.environ.get("SPIKES", "0.0001"))
HEALTHY_VARIANTS = 256
"""Value sets per agent over HTTP: 8 agents x 256 x 50 readings hold about ten spikes."""

RULE_METRICS = [
    ("cpu.percent", 99.0),
    ("mem.percent", 99.5),
    ("swap.percent", 99.5),
    ("disk.percent", 99.0),
    ("load.1", 99.0),
    ("proc.count", 99.5),
    ("net.rx_rate", 99.8),
    ("net.tx_rate", 99.8),
]


def make_rules(owner_id: str, count: int) -> list[AlertRule]:
    rng = random.Random(7)
    rules = []
    for i in range(count):
        metric, threshold = RULE_METRICS[i % len(RULE_METRICS)]
        scope = [
            RuleScope(),
            RuleScope(labels={"env": "prod"}),
            RuleScope(machine_id=c.machine_id(i % c.MACHINES)),
        ][i % 3]
        rules.append(
            AlertRule(
                id=new_id(),
                owner_id=owner_id,
                name=f"rule {i}",
                metric=metric,
                comparison=Comparison.GT,
                threshold=threshold * (0.999 + rng.random() / 1000),
                for_duration=timedelta(seconds=rng.choice([0, 30, 60, 300])),
                scope=scope,
                severity=rng.choice(list(Severity)),
            )
        )
    return rules


def value(rng: random.Random, metric: str) -> float:
    """Readings shaped like a healthy fleet's, with rare spikes past the thresholds."""
    if metric.endswith(".total"):
        return 1000.0
    if metric.endswith(".used"):
        return 1000.0 * (rng.uniform(0.2, 0.9) if rng.random() >= SPIKES else 0.999)
    if rng.random() < SPIKES:
        return 100.0
    return rng.uniform(0.0, 95.0)


def make_batches(batches: int, samples_per_machine: int) -> list[list[MachineSamples]]:
    """Like ``_common.make_batches`` (20 machines x 50 series), with realistic values."""
    rng = random.Random(1)
    out = []
    for b in range(batches):
        batch = []
        for m in range(c.MACHINES):
            samples = []
            for s in range(samples_per_machine):
                at = c.T0 + c.INTERVAL * (b * samples_per_machine + s)
                readings = [
                    Reading(metric, value(rng, metric), labels) for metric, labels in c.SHAPES
                ]
                samples.append(Sample(at, readings))
            batch.append(MachineSamples(c.machine_id(m), samples))
        out.append(batch)
    return out


async def setup(hub: Sentri) -> User:
    state = hub.storage.state
    owner = state.add_user(User(id=new_id(), username="owner", role=Role.USER), "x")
    for i in range(c.MACHINES):
        labels = {"env": "prod" if i % 2 else "dev"}
        state.add_machine(
            Machine(id=c.machine_id(i), name=f"m{i}", owner_id=owner.id, labels=labels)
        )
    return owner


async def one_round(hub: Sentri, batches: list[list[MachineSamples]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        async with anyio.create_task_group() as group:
            for request in batch:
                group.start_soon(hub.ingest, request.machine_id, request.samples)
    await hub.alerts.drain()
    return time.perf_counter() - started


def set_rules(hub: Sentri, rules: list[AlertRule], on: bool) -> None:
    state = hub.storage.state
    for rule in state.list_alert_rules(None):
        state.delete_alert_rule(rule.id)
    if on:
        for rule in rules:
            state.add_alert_rule(rule)
    hub.alerts.invalidate()


async def measure_in_process(data_dir: Path, args: argparse.Namespace) -> None:
    settings = Settings.load(environ={}, data_dir=data_dir)
    all_batches = make_batches(args.batches * args.rounds * 2, args.samples)
    points = sum(len(s.readings) for ms in all_batches[0] for s in ms.samples) * args.batches
    async with Sentri(settings) as hub:
        owner = await setup(hub)
        rules = make_rules(owner.id, args.rules)
        best = {False: float("inf"), True: float("inf")}
        for index in range(args.rounds * 2):
            with_rules = index % 2 == 1
            set_rules(hub, rules, with_rules)
            await hub.alerts.evaluate([])  # load the rules outside the timing
            start = index * args.batches
            elapsed = await one_round(hub, all_batches[start : start + args.batches])
            best[with_rules] = min(best[with_rules], elapsed)
        events = await hub.run_sync(hub.storage.state.list_outbox_events, None, limit=100_000)
        states = await hub.run_sync(hub.storage.state.list_alert_states, None)
    without, with_ = points / best[False], points / best[True]
    ratio = with_ / without
    print(f"no rules:  {without:10,.0f} points/s (best of {args.rounds} rounds)")
    print(f"{args.rules} rules: {with_:10,.0f} points/s (best of {args.rounds} rounds)")
    print(f"series states kept: {len(states)}; alert events written: {len(events)}")
    print(f"ratio {ratio:.2f}; target >= {TARGET}: {c.verdict(ratio >= TARGET)}")


# --------------------------------------------------------------------------- over HTTP


@attrs.frozen
class HealthyPlan(http_bench.Plan):
    """``bench_ingest_http``'s load, with a healthy fleet's values."""

    def bodies(self, agent: int) -> HealthyBodies:  # type: ignore[override]
        return HealthyBodies(self, agent)


class HealthyBodies(http_bench.BodyMaker):
    def __init__(self, plan: http_bench.Plan, agent: int) -> None:
        rng = random.Random(agent)
        self.plan = plan
        self.variants = [metrics_json(rng) for _ in range(HEALTHY_VARIANTS)]
        self.sent = 0


def metrics_json(rng: random.Random) -> bytes:
    metrics: dict[str, list[dict[str, object]]] = {}
    for metric, labels in c.SHAPES:
        entry: dict[str, object] = {"value": round(value(rng, metric), 3)}
        if labels:
            entry["labels"] = labels
        metrics.setdefault(metric, []).append(entry)
    return json.dumps(metrics, separators=(",", ":")).encode()


def api_rules(machine_ids: list[str], count: int) -> list[dict[str, object]]:
    bodies = []
    for rule in make_rules("unused", count):
        scope: dict[str, object] = {}
        if rule.scope.machine_id is not None:
            scope = {"machine_id": machine_ids[int(rule.scope.machine_id[-3:]) % len(machine_ids)]}
        elif rule.scope.labels:
            scope = {"labels": {"bench": "1"}}
        bodies.append(
            {
                "name": rule.name,
                "metric": rule.metric,
                "comparison": rule.comparison.value,
                "threshold": rule.threshold,
                "for_duration": rule.for_duration.total_seconds(),
                "scope": scope,
                "severity": rule.severity.value,
            }
        )
    return bodies


def set_api_rules(client: httpx.Client, bodies: list[dict[str, object]], on: bool) -> None:
    for rule in client.get("/api/v1/alert-rules").json()["items"]:
        client.delete(f"/api/v1/alert-rules/{rule['id']}").raise_for_status()
    if on:
        for body in bodies:
            client.post("/api/v1/alert-rules", json=body).raise_for_status()


def measure_http(args: argparse.Namespace) -> None:
    with _server.ServerProcess(http_bench.SERVER_ENV) as server:
        keys = server.register([f"agent-{i:03d}" for i in range(args.agents)])
        headers = {"authorization": f"Bearer {server.login()}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            machine_ids = [m["id"] for m in client.get("/api/v1/machines").json()["items"]]
            bodies = api_rules(machine_ids, args.rules)
            base = float(int(time.time() - timedelta(days=3).total_seconds()))
            plan = HealthyPlan(server.url, 1000 // len(c.SHAPES), False, base)
            best = {False: 0.0, True: 0.0}
            p99 = {False: 0.0, True: 0.0}
            for index in range(args.rounds * 2):
                with_rules = index % 2 == 1
                set_api_rules(client, bodies, with_rules)
                result = http_bench.run_load(plan, keys, 1, args.duration, 2.0)
                rate = result.accepted / (result.last_end - result.first_start)
                if rate > best[with_rules]:
                    best[with_rules] = rate
                    p99[with_rules] = _server.percentile(result.latencies, 0.99)
                print(
                    f"  window {index + 1}: {'with' if with_rules else 'no  '} rules "
                    f"{rate:10,.0f} points/s, errors {dict(result.errors) or 0}",
                    flush=True,
                )
            events = client.get("/api/v1/alert-events", params={"limit": 1000}).json()["items"]
        server.stop()
    ratio = best[True] / best[False]
    print(f"no rules:  {best[False]:10,.0f} points/s, p99 {p99[False] * 1000:.1f} ms")
    print(f"{args.rules} rules: {best[True]:10,.0f} points/s, p99 {p99[True] * 1000:.1f} ms")
    print(f"alert events written: {len(events)}{'+' if len(events) >= 1000 else ''}")
    print(f"ratio {ratio:.2f}; target >= {TARGET}: {c.verdict(ratio >= TARGET)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--rules", type=int, default=100)
    args = parser.parse_args()
    for line in c.environment():
        print(line)
    print(f"spikes: 1 in {1 / SPIKES:,.0f} readings" if SPIKES else "spikes: none")
    if args.in_process:
        args.rounds = args.rounds or 6
        with tempfile.TemporaryDirectory() as tmp:
            anyio.run(measure_in_process, Path(tmp), args)
    else:
        args.rounds = args.rounds or 4
        measure_http(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
