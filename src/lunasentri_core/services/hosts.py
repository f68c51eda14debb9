"""Checking what users give as a host to reach: a DNS name or an IP address."""

from __future__ import annotations

import ipaddress
import re

from lunasentri_core.errors import FieldError, ValidationError

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
MAX_HOST = 253


def check_host(host: str, field: str = "host") -> str:
    """``host`` if it is an IPv4/IPv6 address or a DNS host name, else a
    :class:`ValidationError` naming ``field``. No scheme, port or path."""
    if _is_address(host) or _is_hostname(host):
        return host
    raise ValidationError(
        [FieldError(field, f"{host[:80]!r} is not a host name or an IP address")],
        what="request body",
    )


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_hostname(host: str) -> bool:
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > MAX_HOST:
        return False
    labels = name.split(".")
    # An all-numeric last label is a malformed address (999.1.1.1), not a name.
    return all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()
