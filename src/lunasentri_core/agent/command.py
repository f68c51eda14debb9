"""``lunasentri agent``."""

from __future__ import annotations

import click


@click.command()
def agent() -> None:
    """Run the push agent."""
    raise click.ClickException("not built yet")
