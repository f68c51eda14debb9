"""Routes: agents."""

from __future__ import annotations

from lunasentri_core.server.api import Api

api = Api("agents")
