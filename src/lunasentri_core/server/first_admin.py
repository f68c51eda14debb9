"""Someone can log in: the first admin, before the server starts.

``lunasentri serve`` refuses to start a server nobody can log into: without an
admin in storage and without ``admin_password`` it stops with the commands that
make one. The demo keeps the password it generated in its data directory, so
running it again reuses the admin and prints a password that works (or says
that it was changed since).
"""

from __future__ import annotations

import os
import secrets
import shlex
from pathlib import Path

import attrs

from lunasentri_core.config import Settings, default_data_dir
from lunasentri_core.errors import ConfigError
from lunasentri_core.hub import open_storage
from lunasentri_core.plugins import create_plugin_manager
from lunasentri_core.security import verify_password
from lunasentri_core.storage.protocols import StateStore

DEMO_PASSWORD_FILE = "demo-admin-password"


@attrs.frozen
class DemoPassword:
    """The demo admin's password, and whether it was made by this run."""

    value: str
    new: bool
    path: Path


def require_admin(settings: Settings) -> None:
    """Refuse to go on when nobody could log in (no admin, no ``admin_password``)."""
    if settings.admin_password is not None:
        return
    storage = open_storage(settings, create_plugin_manager(settings))
    try:
        if _has_admin(storage.state):
            return
    finally:
        storage.close()
    raise ConfigError(_no_admin_message(settings))


def demo_password(data_dir: Path) -> DemoPassword:
    """The password the demo made for its admin in ``data_dir``, made once and kept."""
    path = data_dir / DEMO_PASSWORD_FILE
    try:
        return DemoPassword(path.read_text(encoding="utf-8").strip(), new=False, path=path)
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(12)
    data_dir.mkdir(parents=True, exist_ok=True)
    # Owner-only from the start: the file never exists readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(value + "\n")
    return DemoPassword(value, new=True, path=path)


def password_works(state: StateStore, username: str, password: str) -> bool:
    user = state.find_user(username)
    return user is not None and verify_password(password, state.password_hash(user.id))


def _has_admin(state: StateStore) -> bool:
    return any(user.is_admin for user in state.list_users())


def _no_admin_message(settings: Settings) -> str:
    prefix = ""
    if settings.storage.url is None and settings.data_dir != default_data_dir():
        prefix = f"LUNASENTRI_DATA_DIR={shlex.quote(str(settings.data_dir))} "
    name = shlex.quote(settings.admin_username)
    return (
        "no administrator exists, so nobody could log in to this server. Make one first:\n"
        f"  {prefix}lunasentri users create {name} --admin   (asks for the password)\n"
        "or start the server with LUNASENTRI_ADMIN_PASSWORD set (admin_password: the "
        f"admin {settings.admin_username!r} is made at start), or try it with --demo"
    )
