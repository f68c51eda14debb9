"""Helpers of the timescale plugin's tests that start real processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def child_env(site: Path, **extra: str) -> dict[str, str]:
    """This interpreter's import path (the code under test first), no LUNASENTRI_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    env.update(extra)
    return env
