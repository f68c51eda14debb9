"""What users configure: the plugin's settings and one channel's config."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx

from lunasentri_webhooks.signing import (
    MAX_SECRET_BYTES,
    MIN_SECRET_BYTES,
    SECRET_PREFIX,
    generate_secret,
    is_secret,
)

MAX_URL_LENGTH = 2048
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP header name (RFC 9110 token)."""
_FRAMING_HEADERS = frozenset(
    {"host", "content-type", "content-length", "transfer-encoding", "connection"}
)
"""Headers the notifier sets itself; a channel overriding them would break the request."""


def url_problem(value: str) -> str | None:
    """Why ``value`` cannot be a webhook URL, or ``None`` if it can."""
    if len(value) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    if any(char.isspace() or ord(char) < 0x20 for char in value):
        return "must not contain spaces or control characters"
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as error:
        return f"is not a valid URL ({error})"
    if url.scheme not in ("http", "https"):
        return f"must be an http:// or https:// URL, not {url.scheme or 'a relative'!r} one"
    if not url.host:
        return "has no host"
    if url.port is not None and not 0 < url.port < 65536:
        return f"has an invalid port {url.port}"
    if url.userinfo:
        # The URL is not a secret field, so it must not carry credentials.
        return "must not hold credentials (user:password@); put them in 'headers'"
    return None


def _url(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    problem = url_problem(value)
    if problem is not None:
        raise ValueError(f"{attribute.name} {problem}")


def _secret(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not is_secret(value):
        # Never quote the value: it is (meant to be) a secret.
        raise ValueError(
            f"{attribute.name} must be {SECRET_PREFIX!r} followed by the base64 of "
            f"{MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes "
            "(leave it out to have one generated)"
        )


def _headers(_: object, attribute: attrs.Attribute[Any], value: dict[str, str]) -> None:
    for name, text in value.items():
        lowered = name.lower()
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{attribute.name}: {name!r} is not a valid header name")
        if lowered.startswith("webhook-") or lowered in _FRAMING_HEADERS:
            raise ValueError(
                f"{attribute.name}: {name!r} is set by the notifier and cannot be overridden"
            )
        if any(char in text for char in "\r\n\0"):
            raise ValueError(f"{attribute.name}: the value of {name!r} has a line break")


def _positive(_: object, attribute: attrs.Attribute[Any], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{attribute.name} must be positive")


def _readable_file(_: object, attribute: attrs.Attribute[Any], value: Path | None) -> None:
    if value is not None and not value.is_file():
        raise ValueError(f"{attribute.name}: no such file {str(value)!r}")


@attrs.frozen
class WebhookChannel:
    """One webhook endpoint: the ``config`` of a channel of kind ``webhook``."""

    url: str = attrs.field(
        validator=[attrs.validators.instance_of(str), _url],
        # A new URL needs the secret and headers given again (not kept masked).
        metadata={"destination": True},
    )
    """Where events are POSTed: an ``http://`` or ``https://`` URL."""
    secret: str = attrs.field(
        factory=generate_secret,
        validator=[attrs.validators.instance_of(str), _secret],
        metadata={"secret": True},
    )
    """The signing secret, ``whsec_`` + base64; generated when not given."""
    headers: dict[str, str] = attrs.field(
        factory=dict,
        validator=[attrs.validators.instance_of(dict), _headers],
        # Extra headers usually carry credentials (Authorization, an API key).
        metadata={"secret": True},
    )
    """Extra request headers, e.g. ``{"Authorization": "Bearer ..."}``."""


@attrs.frozen
class WebhookSettings:
    """``[plugins.webhook]`` in the settings file."""

    timeout: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive)
    """The whole of one attempt (resolving, connecting, sending, the response's status)."""
    allow_private_addresses: bool = False
    """Allow targets on loopback, private, link-local and other non-public addresses."""
    ca_bundle: Path | None = attrs.field(default=None, validator=_readable_file)
    """A PEM file of CA certificates to trust instead of the bundled ones (internal CAs)."""
