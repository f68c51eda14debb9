"""Embed LunaSentri in a small anyio application.

Collects this machine's metrics every second through the psutil plugin, stores
them through the SQLite plugin in ./lunasentri-demo-data (or the directory given
as the first argument), and prints the latest values and a short history.

Run it with::

    python examples/embed_in_app.py [DATA_DIR] [--seconds N]
"""

from __future__ import annotations

import argparse
from datetime import timedelta

import anyio

from lunasentri_core import Sentri

PRINTED = ("cpu.percent", "mem.used", "mem.total", "proc.count", "load.1")


async def main(data_dir: str, seconds: float) -> None:
    async with Sentri(data_dir=data_dir) as hub:
        machine = await hub.local_machine()
        print(f"collecting {machine.name} every second for {seconds:g}s into {data_dir}")

        async with anyio.create_task_group() as tg:
            hub.start_collecting(tg, machine, interval=timedelta(seconds=1))
            await anyio.sleep(seconds)
            tg.cancel_scope.cancel()

        print("\nlatest values:")
        for value in await hub.latest(machine.id):
            if value.series.metric in PRINTED or value.series.label("mount") == "/":
                labels = ",".join(f"{k}={v}" for k, v in value.series.labels)
                print(f"  {value.series.metric:<12} {labels:<10} {value.value:>16,.1f}")

        history = await hub.history(
            machine.id,
            "cpu.percent",
            start=hub.clock() - timedelta(seconds=seconds + 1),
            step=timedelta(seconds=2),
            aggregation="max",
        )
        print("\ncpu.percent, max per 2 s:")
        for series in history:
            for point in series.points:
                print(f"  {point.timestamp:%H:%M:%S}  {point.value:5.1f} %")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default="./lunasentri-demo-data")
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    anyio.run(main, args.data_dir, args.seconds)
