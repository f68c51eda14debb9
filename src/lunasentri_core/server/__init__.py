"""The reference server: a Starlette application over a :class:`~lunasentri_core.Sentri` hub."""

from lunasentri_core.server.app import create_app

__all__ = ["create_app"]
