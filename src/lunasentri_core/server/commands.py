"""``lunasentri users`` and ``lunasentri keys``: manage users and the keys of
stored secrets in the configured storage directly.

These work without a running server (a server may run at the same time: the
storage handles concurrent access), which is how the first admin is made on a
fresh install, and how a locked-out admin gets back in.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import click

from lunasentri_core.config import Settings
from lunasentri_core.errors import ConflictError, LunaSentriError, NotFoundError
from lunasentri_core.hub import open_storage
from lunasentri_core.model import Role, User, utcnow
from lunasentri_core.plugins import create_plugin_manager
from lunasentri_core.security import hash_password
from lunasentri_core.services import audit
from lunasentri_core.services.accounts import (
    add_user,
    check_password,
    check_username,
    new_user,
    set_password,
)
from lunasentri_core.services.credentials import rotate_keys
from lunasentri_core.storage.protocols import StateStore

F = TypeVar("F", bound=Callable[..., Any])


class _Settings(Protocol):
    def settings(self) -> Settings: ...


def _friendly_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LunaSentriError as error:
            raise click.ClickException(str(error)) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def _state(obj: _Settings) -> Iterator[StateStore]:
    settings = obj.settings()
    storage = open_storage(settings, create_plugin_manager(settings))
    try:
        yield storage.state
    finally:
        storage.close()


def _find(state: StateStore, username: str) -> User:
    user = state.find_user(username)
    if user is None:
        raise NotFoundError(f"no user named {username!r}")
    return user


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
        if not password:
            raise click.ClickException("no password on standard input")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    check_password(password)
    return password


def _record(state: StateStore, action: str, user: User, **detail: Any) -> None:
    # The operator at the console is not a user of the system: the actor is "system".
    entry = audit.entry(
        action=action,
        actor=None,
        at=utcnow(),
        target_type="user",
        target_id=user.id,
        detail={"username": user.username, "via": "cli", **detail},
    )
    state.add_audit(entry)


_PASSWORD_STDIN = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password as one line from standard input instead of prompting.",
)


@click.group()
def users() -> None:
    """Manage users (directly in the configured storage)."""


@users.command("create")
@click.argument("username")
@click.option("--admin", is_flag=True, help="Make the user an administrator.")
@_PASSWORD_STDIN
@click.pass_obj
@_friendly_errors
def create(obj: _Settings, username: str, admin: bool, password_stdin: bool) -> None:
    """Create a user; the password is prompted for twice (or read with --password-stdin)."""
    check_username(username)
    with _state(obj) as state:
        # Before asking for a password that would be wasted.
        if state.find_user(username) is not None:
            raise ConflictError(f"username {username!r} is already taken")
        password = _read_password(password_stdin)
        role = Role.ADMIN if admin else Role.USER
        user = add_user(state, new_user(username, role, utcnow()), password)
        _record(state, "user.create", user, role=role.value)
    click.echo(f"created {role.value} {user.username} (id {user.id})")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
@_friendly_errors
def list_users(obj: _Settings, as_json: bool) -> None:
    """List users."""
    with _state(obj) as state:
        found = state.list_users()
    rows = [
        {
            "id": u.id,
            "username": u.username,
            "role": u.role.value,
            "created_at": u.created_at.isoformat(timespec="seconds"),
        }
        for u in found
    ]
    if as_json:
        click.echo(json.dumps({"items": rows}, indent=2))
        return
    headers = ("username", "role", "id", "created_at")
    widths = [max([len(h), *(len(r[h]) for r in rows)]) for h in headers]
    for cells in [dict(zip(headers, headers, strict=True)), *rows]:
        click.echo("  ".join(cells[h].ljust(w) for h, w in zip(headers, widths, strict=True)))


@users.command("set-password")
@click.argument("username")
@_PASSWORD_STDIN
@click.pass_obj
@_friendly_errors
def set_password_command(obj: _Settings, username: str, password_stdin: bool) -> None:
    """Set a user's password; logs them out everywhere."""
    with _state(obj) as state:
        user = _find(state, username)
        password = _read_password(password_stdin)
        revoked = set_password(state, user.id, hash_password(password), utcnow())
        state.clear_login_failures(user.username)
        _record(state, "user.password_reset", user, revoked_sessions=revoked)
    click.echo(f"password of {user.username} changed; {revoked} session(s) revoked")


@users.command("delete")
@click.argument("username")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
@_friendly_errors
def delete(obj: _Settings, username: str, yes: bool) -> None:
    """Delete a user with their machines, series, alert rules and sessions."""
    with _state(obj) as state:
        user = _find(state, username)
        machines = state.list_machines(user.id)
        if not yes:
            click.confirm(
                f"Delete {user.username} and their {len(machines)} machine(s) with all data?",
                abort=True,
            )
        state.delete_user(user.id)
        _record(state, "user.delete", user, machines=len(machines))
    click.echo(f"deleted {user.username} and {len(machines)} machine(s)")


@click.group()
def keys() -> None:
    """Manage the keys that encrypt stored credentials (see the docs' "Stored secrets")."""


@keys.command("rotate")
@click.option(
    "--reencrypt-only",
    is_flag=True,
    help="Add no key: re-encrypt under the current one (after changing [secrets] current).",
)
@click.pass_obj
@_friendly_errors
def rotate_command(obj: _Settings, reencrypt_only: bool) -> None:
    """Add a new current key to the key file and re-encrypt every stored secret under it.

    The old keys stay in the key file, so secrets a running server has not seen
    re-encrypted yet still decrypt. With keys from [secrets] keys in the
    settings, add the new key there, set [secrets] current, and run this with
    --reencrypt-only. Safe to run again after an interruption.
    """
    settings = obj.settings()
    with _state(obj) as state:
        report = rotate_keys(settings, state, new_key=not reencrypt_only)
        state.add_audit(
            audit.entry(
                action="keys.rotate",
                actor=None,
                at=utcnow(),
                target_type="secret_key",
                target_id=report.key_id,
                detail={"via": "cli", "reencrypted": report.reencrypted},
            )
        )
    click.echo(
        f"current key: {report.key_id}; re-encrypted {report.reencrypted} secret(s), "
        f"{report.unchanged} already under it"
        + (f", {report.skipped} changed meanwhile (already sealed anew)" if report.skipped else "")
    )
