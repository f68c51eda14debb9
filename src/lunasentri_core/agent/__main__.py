"""``python -m lunasentri_core.agent``: the agent without the rest of the CLI.

The same command as ``lunasentri agent``; the settings file comes from
``$LUNASENTRI_CONFIG`` (or ``./lunasentri.toml``) and the log level from
``log_level`` (``$LUNASENTRI_LOG_LEVEL``, default ``info``). Handy for service wrappers that
want one interpreter and a module (Windows services, containers).
"""

import logging

from lunasentri_core.agent.command import agent

# The agent command sets the level from the settings once it has read them.
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
agent(prog_name="python -m lunasentri_core.agent")
