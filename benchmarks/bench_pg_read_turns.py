"""Benchmark: one-series history reads over HTTP on PostgreSQL, two code versions in turns.

For A/B work on the read path, faster than ``bench_vs_victoriametrics.py --postgres``
(which ingests anew for every run): ``prepare`` ingests that benchmark's data set
(``--scale``) through a real server into a kept schema (``lsbench_pgread_keep``,
or ``$LUNASENTRI_BENCH_PGREAD_SCHEMA``; replaced by the next ``prepare``, dropped
by ``drop``) and compacts it;
``measure LABEL=PYTHONPATH ...`` then starts a real server on that schema with
each ``PYTHONPATH`` in turn (``git archive`` of the old code, say, and the
worktree's), order rotated every round, and times the benchmark's two reads
(one series over the span at 500 steps, and at 1-minute steps) and the
machine's ``/latest`` (all its series' newest values): the median wall
time of ``--repeat`` requests, and the CPU per request of the server process
and of the PostgreSQL backends serving it (on a loaded machine the CPU holds
where the wall time is mostly waiting for a core). Prints each round and the
medians over rounds.

    python benchmarks/bench_pg_read_turns.py prepare [--scale 0.125]
    python benchmarks/bench_pg_read_turns.py measure old=/tmp/old/src:... new=src:... \\
        [--rounds 8] [--repeat 300]
    python benchmarks/bench_pg_read_turns.py parts [--repeat 300]
    python benchmarks/bench_pg_read_turns.py drop

``parts`` times the two reads in this process, on the code it runs, and
where each spends its CPU (:mod:`_read_parts`).

Code from before migration 0013 refuses a database at 0013: copy
``0013_latest_per_machine.py`` into its ``migrations/versions`` (the schema of
the latest values does not change a history read) and give ``--reads h500,h1m``
(it reads no latest values on PostgreSQL since).

Without a command (``run.py`` runs it so) it says so and skips.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import _postgres as pg
import _read_parts
import _server
import bench_vs_victoriametrics as vm
import httpx
import psutil
import sqlalchemy as sa

# Several people measuring at once each keep a schema of their own.
SCHEMA = os.environ.get("LUNASENTRI_BENCH_PGREAD_SCHEMA", "lsbench_pgread_keep")
STATE = Path(tempfile.gettempdir()) / f"{SCHEMA}.json"
READS = ("h500", "h1m", "latest")
"""One series over the span at 500 steps and at 1-minute steps; the machine's latest values."""


def scoped(url: str) -> str:
    options = quote(f"-csearch_path={SCHEMA}", safe="")
    return f"{url}{'&' if '?' in url else '?'}options={options}&application_name={SCHEMA}"


def reset_schema(url: str, create: bool) -> None:
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
            if create:
                conn.execute(sa.text(f'CREATE SCHEMA "{SCHEMA}"'))
    finally:
        admin.dispose()


def prepare(url: str, scale: float) -> None:
    reset_schema(url, create=True)
    data = vm.DataSet(scale)
    schema_url = scoped(url)
    settings = {**vm.SERVER_ENV, "LUNASENTRI_STORAGE__URL": schema_url}
    with _server.ServerProcess(settings) as server:
        keys = server.register(data.names)
        vm.ingest(
            server.url,
            data.lunasentri_requests(keys),
            "/api/v1/ingest",
            4,
            lambda: 0.0,
            data.points,
        )
        headers = {"authorization": f"Bearer {server.login()}"}
        with httpx.Client(base_url=server.url, headers=headers) as client:
            page = vm.get_json(client, "/api/v1/machines", limit=1000, latest="false")
        server.stop()
    backends = pg.BackendCpu(schema_url, SCHEMA)
    try:
        vm.compact_postgres(schema_url, SCHEMA, data.points, backends)
    finally:
        backends.close()
    ids = {item["name"]: item["id"] for item in page["items"]}
    state = {
        "url": schema_url,
        "machine": ids[data.names[0]],
        "start": data.start_ms / 1000,
        "end": data.end_ms / 1000,
        "points_per_series": data.points_per_series,
    }
    STATE.write_text(json.dumps(state))
    print(f"prepared: {data.points:,} points in schema {SCHEMA} ({STATE})")


def measure_one(
    state: dict[str, object], pythonpath: str, repeat: int, reads: Sequence[str] = READS
) -> dict[str, float]:
    """One server with ``pythonpath``: each read's median wall and CPU per request (ms)."""
    url = str(state["url"])
    env = {**vm.SERVER_ENV, "LUNASENTRI_STORAGE__URL": url, "PYTHONPATH": pythonpath}
    start, end = float(state["start"]), float(state["end"])  # type: ignore[arg-type]
    span = end - start
    metric, labels = vm.SERIES_QUERIED
    label_param = ",".join(f"{k}:{v}" for k, v in labels.items())
    wanted = {"h500": min(500, int(state["points_per_series"])), "h1m": round(span / 60)}  # type: ignore[call-overload]
    steps = {"h500": span / 500, "h1m": 60.0}
    history = {"metric": metric, "labels": label_param, "start": start, "end": end}
    out: dict[str, float] = {}
    with _server.ServerProcess(env) as server:
        backends = pg.BackendCpu(url, SCHEMA)
        process = psutil.Process(server.pid)
        headers = {"authorization": f"Bearer {server.login()}"}
        machine = f"/api/v1/machines/{state['machine']}"
        try:
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
                for name in reads:
                    if name == "latest":
                        path, params = f"{machine}/latest", {}
                    else:
                        path, params = f"{machine}/history", {**history, "step": steps[name]}
                    for _ in range(5):  # warm, and check the answer
                        found = vm.get_json(client, path, **params)
                        if name == "latest":
                            vm.expect(name, min(len(found["items"]), 1), 1)
                        else:
                            vm.expect(name, len(found["series"][0]["points"]), wanted[name])
                    times = []
                    cpu = sum(process.cpu_times()[:2])
                    pg_cpu = backends.seconds()
                    for _ in range(repeat):
                        started = time.perf_counter()
                        client.get(path, params=params).raise_for_status()
                        times.append((time.perf_counter() - started) * 1000)
                    out[f"{name}_wall"] = statistics.median(times)
                    out[f"{name}_server"] = (sum(process.cpu_times()[:2]) - cpu) / repeat * 1000
                    out[f"{name}_pg"] = (backends.seconds() - pg_cpu) / repeat * 1000
        finally:
            backends.close()
        server.stop()
    for name in reads:
        out[f"{name}_cpu"] = out[f"{name}_server"] + out[f"{name}_pg"]
    return out


def measure(
    versions: dict[str, str], rounds: int, repeat: int, reads: Sequence[str] = READS
) -> None:
    state = json.loads(STATE.read_text())
    results: dict[str, list[dict[str, float]]] = {label: [] for label in versions}
    labels = list(versions)
    for r in range(rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            found = measure_one(state, versions[label], repeat, reads)
            results[label].append(found)
            shown = " ".join(f"{k} {v:.2f}" for k, v in found.items())
            print(f"round {r + 1} {label}: {shown} (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"medians over {rounds} rounds, ms (wall: median of {repeat}; CPU: per request):")
    for label, runs in results.items():
        keys = runs[0].keys()
        shown = " ".join(f"{k} {statistics.median(run[k] for run in runs):.2f}" for k in keys)
        print(f"  {label}: {shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    prep = sub.add_parser("prepare", help="ingest and compact the data set into the kept schema")
    prep.add_argument("--scale", type=float, default=0.125, help="of the day (default 0.125)")
    meas = sub.add_parser("measure", help="time the reads, each version in turn")
    meas.add_argument("versions", nargs="+", help="LABEL=PYTHONPATH")
    meas.add_argument("--rounds", type=int, default=8)
    meas.add_argument("--repeat", type=int, default=300)
    meas.add_argument(
        "--reads",
        default=",".join(READS),
        help="comma-separated, of h500, h1m, latest (default all; code before migration 0013"
        " reads no latest values on PostgreSQL)",
    )
    parts = sub.add_parser("parts", help="the reads' parts, timed in this process")
    parts.add_argument("--repeat", type=int, default=300)
    sub.add_parser("drop", help="drop the kept schema")
    args = parser.parse_args(argv)
    if args.command is None:
        # run.py runs every benchmark bare: this one is a tool for A/B turns.
        print("bench_pg_read_turns: skipped, an A/B tool: give prepare, measure, parts or drop")
        return 0
    url = pg.postgres_url()
    if url is None:
        print(pg.skip_line("bench_pg_read_turns"))
        return 0
    if args.command == "prepare":
        prepare(url, args.scale)
    elif args.command == "measure":
        reads = args.reads.split(",")
        if not set(reads) <= set(READS):
            parser.error(f"--reads: {args.reads!r}, expected some of {', '.join(READS)}")
        versions = dict(v.split("=", 1) for v in args.versions)
        measure(versions, args.rounds, args.repeat, reads)
    elif args.command == "parts":
        _read_parts.breakdown(json.loads(STATE.read_text()), args.repeat)
    else:
        reset_schema(url, create=False)
        STATE.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
