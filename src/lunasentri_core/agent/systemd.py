"""A systemd unit that runs this very agent (``lunasentri agent --print-systemd-unit``)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

SERVICE_USER = "lunasentri"
STATE_DIRECTORY = "lunasentri-agent"
ENVIRONMENT_FILE = "/etc/lunasentri/agent.env"


def agent_command() -> list[str]:
    """How to start the agent that is running now, with absolute paths."""
    argv0 = Path(sys.argv[0])
    if argv0.stem == "lunasentri" and argv0.is_file():
        return [str(argv0.absolute()), "agent"]
    beside = Path(sys.executable).parent / "lunasentri"
    if beside.is_file():
        return [str(beside), "agent"]
    return [sys.executable, "-m", "lunasentri_core.agent"]


def systemd_unit(command: Sequence[str], environment: Mapping[str, str]) -> str:
    """The unit text; ``environment`` holds the non-secret settings to pin in it."""
    env_lines = [f"Environment={_quote(f'{k}={v}')}" for k, v in environment.items()]
    exec_start = " ".join(_quote(part) for part in command)
    return "\n".join(
        [
            "# LunaSentri push agent. Install:",
            f"#   sudo useradd --system --no-create-home --shell /usr/sbin/nologin {SERVICE_USER}",
            "#   sudo install -d -m 0750 /etc/lunasentri",
            f"#   echo 'LUNASENTRI_AGENT__API_KEY=lsk_...' | sudo tee {ENVIRONMENT_FILE}",
            f"#   sudo chmod 0600 {ENVIRONMENT_FILE}   # without a key the agent enrols by claim",
            "#   sudo cp this-file /etc/systemd/system/lunasentri-agent.service",
            "#   sudo systemctl daemon-reload && sudo systemctl enable --now lunasentri-agent",
            "#   journalctl -u lunasentri-agent   # shows the claim token in claim mode",
            "[Unit]",
            "Description=LunaSentri push agent",
            "Documentation=https://lunasentri.readthedocs.io/en/latest/agent.html",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"User={SERVICE_USER}",
            f"Group={SERVICE_USER}",
            # systemd creates /var/lib/<name> owned by the user: the spool lives there.
            f"StateDirectory={STATE_DIRECTORY}",
            "StateDirectoryMode=0700",
            f"Environment=LUNASENTRI_DATA_DIR=/var/lib/{STATE_DIRECTORY}",
            *env_lines,
            f"EnvironmentFile=-{ENVIRONMENT_FILE}",
            f"ExecStart={exec_start}",
            "Restart=on-failure",
            "RestartSec=5",
            # SIGTERM lets the send in flight finish; the spool keeps the rest.
            "KillSignal=SIGTERM",
            "TimeoutStopSec=30",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "PrivateTmp=yes",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def _quote(word: str) -> str:
    if word and not any(c in word for c in " \t\"'\\"):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
