"""The web dashboard: server-rendered pages over the same services as the API."""

from lunasentri_core.server.dashboard.pages import dashboard_routes

__all__ = ["dashboard_routes"]
