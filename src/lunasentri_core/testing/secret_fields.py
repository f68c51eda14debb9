"""Which fields of a settings or channel class hold secrets, and what they hold.

The API masks the fields of a channel class marked ``metadata={"secret": True}``
and the dashboard never writes them back; the contract suites also search every
secret value in what a component returns and logs. A field counts as secret when
it is marked so, or when its name or its type looks secret, whether marked or
not: a forgotten mark must not hide a leak. ``metadata={"secret": False}``
declares a field that only looks secret (``idempotency_key``) as not one.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

SECRET_NAME_HINTS = ("secret", "token", "password", "passwd", "apikey", "credential")
"""A field whose name contains one of these looks secret (``bot_token``, ``clientSecret``)."""

SECRET_NAME_WORDS = frozenset({"key", "keys", "pwd", "passphrase", "auth", "authorization"})
"""A field whose name has one of these as a word looks secret (``api_key``, ``basic_auth``)."""

NOT_SECRET_LAST_WORDS = frozenset(
    {"file", "path", "dir", "url", "id", "ids", "name", "prefix", "type", "kind", "size", "len",
     "length", "count", "header", "field", "env", "ttl", "expiry", "expires", "at"}
)  # fmt: skip
"""...unless its last word says it names or measures one (``key_file``, ``token_url``)."""

SECRET_TYPE_HINT = "secret"
"""A field whose type's name contains this looks secret (``SecretStr``, ``SecretBytes``,
``NewType("SigningSecret", str)``, ``Annotated[str, Secret()]``)."""

MIN_SECRET_CHARS = 6
"""Shorter secret values are not searched for in text (too many false hits)."""

_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def name_looks_secret(name: str) -> bool:
    """Whether a field named ``name`` probably holds a secret."""
    words = [word.lower() for word in _WORDS.findall(name)]
    if not words or words[-1] in NOT_SECRET_LAST_WORDS:
        return False
    lowered = name.lower()
    return any(hint in lowered for hint in SECRET_NAME_HINTS) or any(
        word in SECRET_NAME_WORDS for word in words
    )


def type_looks_secret(annotation: Any) -> bool:
    """Whether a field's type (or a part of it: ``X | None``, ``Annotated``) names a secret."""
    if annotation is None:
        return False
    if isinstance(annotation, str):
        return SECRET_TYPE_HINT in annotation.lower()
    name = getattr(annotation, "__name__", None) or type(annotation).__name__
    if SECRET_TYPE_HINT in str(name).lower():
        return True
    supertype = getattr(annotation, "__supertype__", None)  # a NewType
    if supertype is not None and type_looks_secret(supertype):
        return True
    parts = (*typing.get_args(annotation), *getattr(annotation, "__metadata__", ()))
    return any(type_looks_secret(part) for part in parts if part is not annotation)


def _types_of(cls: type[Any]) -> Mapping[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception:  # an annotation that does not resolve: use attrs' own, maybe a string
        return {field.name: field.type for field in attrs.fields(cls)}


def looks_secret(cls: type[Any], field: attrs.Attribute[Any]) -> bool:
    """Whether ``field`` of the attrs class ``cls`` looks secret by its name or its type."""
    return name_looks_secret(field.name) or type_looks_secret(_types_of(cls).get(field.name))


def secret_fields(cls: type[Any]) -> list[str]:
    """Names of the fields of ``cls`` that hold secrets: those marked
    ``metadata={"secret": True}`` and those that look secret unless marked ``False``."""
    return [field.name for field in attrs.fields(cls) if _is_secret(cls, field)]


def _is_secret(cls: type[Any], field: attrs.Attribute[Any]) -> bool:
    marked = field.metadata.get("secret")
    return looks_secret(cls, field) if marked is None else bool(marked)


def unmarked_secret_fields(cls: type[Any]) -> list[str]:
    """Fields of ``cls`` that look secret but carry no ``secret`` mark either way."""
    return [
        field.name
        for field in attrs.fields(cls)
        if "secret" not in field.metadata and looks_secret(cls, field)
    ]


def check_secret_fields(cls: type[Any], what: str = "field") -> None:
    """Assert that every field of ``cls`` that looks secret is marked one way or the other.

    ``metadata={"secret": True}`` makes the API mask it; ``metadata={"secret": False}``
    declares a field that only looks secret. ``what`` starts the failure message
    (``"channel field"``).
    """
    for field in attrs.fields(cls):
        marked = field.metadata.get("secret")
        assert marked is None or isinstance(marked, bool), (
            f"{what} {field.name!r}: metadata 'secret' must be True or False"
        )
    unmarked = unmarked_secret_fields(cls)
    assert not unmarked, (
        f"{what} {unmarked[0]!r} looks like a secret: declare it with "
        "attrs.field(metadata={'secret': True}) so the API masks it "
        "(or metadata={'secret': False} if it is not one)"
    )


def secret_values(cls: type[Any], mapping: Mapping[str, Any]) -> list[str]:
    """The strings ``mapping`` holds in the secret fields of ``cls`` (see :func:`secret_fields`),
    inside mappings and lists too, of at least :data:`MIN_SECRET_CHARS` characters."""
    return [
        text
        for name in secret_fields(cls)
        for text in _strings(mapping.get(name))
        if len(text) >= MIN_SECRET_CHARS
    ]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif value is not None and type_looks_secret(type(value)):
        # A SecretStr-like wrapper: its value, wherever it keeps it.
        getter = getattr(value, "get_secret_value", None)
        if callable(getter):
            yield from _strings(getter())
