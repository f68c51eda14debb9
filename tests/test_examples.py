"""The examples run as the docs show them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_embed_in_app_prints_this_machines_metrics(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "embed_in_app.py"), str(tmp_path), "--seconds", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    latest = result.stdout.split("latest values:")[1].split("cpu.percent, max per 2 s:")[0]
    metrics = {line.split()[0] for line in latest.strip().splitlines()}
    assert {"cpu.percent", "mem.used", "mem.total", "proc.count", "disk.used"} <= metrics
    history = result.stdout.split("cpu.percent, max per 2 s:")[1].strip().splitlines()
    assert history, "no history points"
    assert all(line.strip().endswith("%") for line in history)
    assert (tmp_path / "lunasentri.db").is_file()
