"""``lunasentri users``."""

from __future__ import annotations

import click


@click.group()
def users() -> None:
    """Manage users."""
