"""``lunasentri serve`` and ``lunasentri users``."""

from __future__ import annotations

import click


@click.command()
def serve() -> None:
    """Run the reference server."""
    raise click.ClickException("not built yet")


@click.group()
def users() -> None:
    """Manage users."""
