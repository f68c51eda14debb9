"""``python -m lunasentri_core.agent``: the agent without the rest of the CLI.

The same command as ``lunasentri agent``; the settings file comes from
``$LUNASENTRI_CONFIG`` (or ``./lunasentri.toml``) and the log level from
``$LUNASENTRI_LOG_LEVEL`` (default ``warning``). Handy for service wrappers that
want one interpreter and a module (Windows services, containers).
"""

import logging
import os

from lunasentri_core.agent.command import agent

logging.basicConfig(
    level=os.environ.get("LUNASENTRI_LOG_LEVEL", "warning").upper(),
    format="%(levelname)s %(name)s: %(message)s",
)
agent(prog_name="python -m lunasentri_core.agent")
