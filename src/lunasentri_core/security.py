"""Secrets: API keys and tokens, password hashes, and signatures.

* Tokens (API keys, session tokens, claim tokens, reset tokens) are 32 random
  bytes behind a visible prefix that says what they are (``lsk_`` for a machine
  key); only their SHA-256 hash is stored, and lookups compare hashes, so a
  stolen database does not yield usable keys.
* Passwords are hashed with scrypt (memory-hard, in the standard library).

Secrets that must be used again in clear (stored credentials) are encrypted by
the secret box, :mod:`lunasentri_core.secretbox`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import attrs

API_KEY_PREFIX = "lsk_"
SESSION_PREFIX = "lss_"
CLAIM_PREFIX = "lsc_"
RESET_PREFIX = "lsr_"
TOKEN_BYTES = 32
VISIBLE_CHARS = 8
"""How much of a token (after its prefix) is kept in clear to tell keys apart in lists."""

# scrypt cost: n=2**15, r=8 uses 32 MiB and about 50 ms here, OWASP's recommended floor.
_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024


@attrs.frozen
class IssuedToken:
    """A freshly made token: ``secret`` is shown once; store ``hash`` and ``visible``."""

    secret: str
    hash: str
    visible: str


def issue_token(prefix: str = API_KEY_PREFIX) -> IssuedToken:
    body = base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).rstrip(b"=").decode()
    secret = prefix + body
    return IssuedToken(secret, hash_token(secret), secret[: len(prefix) + VISIBLE_CHARS])


def hash_token(secret: str) -> str:
    """The stored form of a token: hex SHA-256 (tokens are random, so no salt is needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def tokens_match(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(secret), stored_hash)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return "$".join(
        ["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(digest)]
    )


def verify_password(password: str, stored: str) -> bool:
    """Check ``password`` against a :func:`hash_password` result (constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, _unb64(digest))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)
