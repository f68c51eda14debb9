"""Standard Webhooks signatures, for the sender and for receivers.

A webhook carries three headers: ``webhook-id`` (the message id, the same on
every retry), ``webhook-timestamp`` (integer seconds since the epoch, the time of
this attempt) and ``webhook-signature``: ``v1,`` followed by the base64 of
HMAC-SHA256 over ``{id}.{timestamp}.{body}``, keyed with the secret's bytes.
The header may hold several space-separated signatures (so a secret can be
rotated without downtime); one match is enough. Secrets are written
``whsec_`` + base64 of 24 to 64 random bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
DEFAULT_SECRET_BYTES = 32
DEFAULT_TOLERANCE = 300
"""Seconds a receiver accepts between the sender's clock and its own, either way."""

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"

MAX_TIMESTAMP = 10**12 - 1
"""The largest timestamp handled (12 digits, the year 33658), so parsing stays cheap."""
_TIMESTAMP = re.compile(r"\d{1,12}")
_SHOWN = 40
"""How much of a malformed header value an error message quotes."""


class WebhookVerificationError(ValueError):
    """A webhook failed verification; the message names the check that failed."""


def generate_secret(nbytes: int = DEFAULT_SECRET_BYTES) -> str:
    """A new signing secret: ``whsec_`` + base64 of ``nbytes`` random bytes (24 to 64)."""
    if not MIN_SECRET_BYTES <= nbytes <= MAX_SECRET_BYTES:
        raise ValueError(
            f"a secret has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {nbytes}"
        )
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of ``secret``: ``whsec_``-prefixed or bare base64, or the raw key bytes.

    Missing base64 padding is tolerated, as the reference libraries do. Raises
    :class:`ValueError` (never quoting the secret) when it is empty or not base64.
    """
    if isinstance(secret, bytes):
        key = secret
    else:
        encoded = secret.removeprefix(SECRET_PREFIX).strip()
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"the webhook secret is not valid: expected {SECRET_PREFIX!r} followed by base64"
            ) from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def is_secret(text: str) -> bool:
    """Whether ``text`` is a secret in the canonical form: ``whsec_`` + base64 of 24-64 bytes."""
    if not text.startswith(SECRET_PREFIX):
        return False
    try:
        return MIN_SECRET_BYTES <= len(secret_key(text)) <= MAX_SECRET_BYTES
    except ValueError:
        return False


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes | str) -> dict[str, str]:
    """The three Standard Webhooks headers for sending ``body``.

    :param secret: The channel's secret (``whsec_...``, with or without the prefix).
    :param msg_id: The message id; the same on every retry of one message. It must
        not contain ``.``, which would make the signed content ambiguous.
    :param timestamp: The time of this attempt, in integer seconds since the epoch.
    :param body: The exact bytes sent (a ``str`` is encoded as UTF-8).
    :returns: ``{"webhook-id": ..., "webhook-timestamp": ..., "webhook-signature": ...}``.
    """
    if not msg_id or "." in msg_id or msg_id != msg_id.strip():
        raise ValueError(f"message id {msg_id!r} must be non-empty, without '.' or spaces")
    integer = isinstance(timestamp, int) and not isinstance(timestamp, bool)
    if not integer or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"timestamp must be integer seconds since the epoch, not {timestamp!r}")
    signature = _signature(secret_key(secret), msg_id, timestamp, _as_bytes(body))
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: f"{SIGNATURE_VERSION},{base64.b64encode(signature).decode('ascii')}",
    }


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: int = DEFAULT_TOLERANCE,
    *,
    now: int | None = None,
) -> None:
    """Check a received webhook; return quietly when it is authentic and fresh.

    :param secret: The endpoint's secret (``whsec_...``, with or without the prefix).
    :param headers: The request headers; names are matched case-insensitively.
    :param body: The raw request body, exactly as received (before any JSON parsing).
    :param tolerance: Seconds the timestamp may differ from ``now``, either way.
    :param now: The current time in seconds since the epoch (default: the clock).
    :raises WebhookVerificationError: A header is missing or malformed, the timestamp
        is outside the tolerance, or no ``v1`` signature matches.
    :raises ValueError: The secret itself is malformed (a configuration error).
    """
    key = secret_key(secret)
    found = {name.lower(): value for name, value in headers.items()}
    msg_id = _required(found, HEADER_ID)
    timestamp = _timestamp(_required(found, HEADER_TIMESTAMP))
    _check_fresh(timestamp, tolerance, int(time.time()) if now is None else now)
    candidates = _v1_signatures(_required(found, HEADER_SIGNATURE))
    expected = _signature(key, msg_id, timestamp, _as_bytes(body))
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise WebhookVerificationError(
            f"no {SIGNATURE_VERSION} signature matches (checked {len(candidates)}): wrong "
            "secret, or the body was changed (verify the raw body, before any JSON parsing)"
        )


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def _required(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name, "").strip()
    if not value:
        raise WebhookVerificationError(f"missing header {name}")
    return value


def _timestamp(value: str) -> int:
    if not _TIMESTAMP.fullmatch(value):
        raise WebhookVerificationError(
            f"malformed {HEADER_TIMESTAMP} {value[:_SHOWN]!r}: "
            "expected integer seconds since the epoch"
        )
    return int(value)


def _check_fresh(timestamp: int, tolerance: int, now: int) -> None:
    if tolerance < 0:
        raise ValueError(f"tolerance must not be negative, not {tolerance}")
    if timestamp < now - tolerance:
        raise WebhookVerificationError(
            f"{HEADER_TIMESTAMP} {timestamp} is {now - timestamp} s old, "
            f"outside the tolerance of {tolerance} s (a replay, or a clock out of step)"
        )
    if timestamp > now + tolerance:
        raise WebhookVerificationError(
            f"{HEADER_TIMESTAMP} {timestamp} is {timestamp - now} s in the future, "
            f"outside the tolerance of {tolerance} s (a clock out of step)"
        )


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a header; other versions are skipped, not errors."""
    found: list[bytes] = []
    versions: list[str] = []
    malformed: list[str] = []
    for entry in header.split():
        version, comma, encoded = entry.partition(",")
        if not comma or not version or not encoded:
            malformed.append(entry)
            continue
        versions.append(version)
        if version != SIGNATURE_VERSION:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            malformed.append(entry)
    if found:
        return found
    if malformed:
        raise WebhookVerificationError(
            f"malformed {HEADER_SIGNATURE} entry {malformed[0][:_SHOWN]!r}: "
            f"expected space-separated '{SIGNATURE_VERSION},<base64>' entries"
        )
    raise WebhookVerificationError(
        f"{HEADER_SIGNATURE} has no {SIGNATURE_VERSION} signature "
        f"(versions found: {', '.join(sorted(set(versions)))})"
    )
