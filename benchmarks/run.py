"""Run every ``bench_*.py`` beside this file, one after another, in fresh interpreters.

Usage: ``python benchmarks/run.py [NAME ...]`` runs the scripts whose file name
contains one of the NAMEs (all of them without arguments).

Each script prints its own figures and ratios; targets are reported, not asserted,
so the exit status is non-zero only when a script crashes or none matched.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def select(names: Sequence[str]) -> list[Path]:
    scripts = sorted(HERE.glob("bench_*.py"))
    if not names:
        return scripts
    return [script for script in scripts if any(name in script.name for name in names)]


def run(script: Path) -> int:
    print(f"=== {script.name}", flush=True)
    started = time.perf_counter()
    # A separate interpreter per script keeps one benchmark's caches and threads
    # from skewing the next one.
    returncode = subprocess.run([sys.executable, str(script)], check=False).returncode
    status = "ok" if returncode == 0 else f"CRASHED (exit {returncode})"
    print(f"=== {script.name}: {status} in {time.perf_counter() - started:.1f} s", flush=True)
    return returncode


def main(argv: Sequence[str]) -> int:
    scripts = select(argv)
    if not scripts:
        print(f"no benchmark matches {' '.join(argv) or 'bench_*.py'}", file=sys.stderr)
        return 2
    crashed = [script.name for script in scripts if run(script) != 0]
    if crashed:
        print(f"crashed: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
