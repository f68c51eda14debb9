"""Query parameters of list endpoints: parsed strictly, each problem a 422 naming it."""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Collection
from datetime import datetime
from typing import TypeVar

from lunasentri_core.codec import parse_datetime
from lunasentri_core.errors import FieldError, ValidationError
from lunasentri_core.model import LABEL_NAME, MAX_LABEL_VALUE, Labels
from lunasentri_core.server.api import Call, Schema

E = TypeVar("E", bound=enum.Enum)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_ID = 200
ID_PATTERN = "^[!-~]+$"
"""Ids are visible ASCII: what the server makes (hex), agent ids, and nothing a
schema cannot state exactly (Python's ``isprintable`` has no JSON Schema pattern)."""
_ID = ID_RE = re.compile(ID_PATTERN)

LIMIT: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}
SINCE: Schema = {
    "type": "string",
    "format": "date-time",
    "description": "Only what happened at or after this time (ISO 8601 with an offset).",
}
BOOLEAN: Schema = {"type": "boolean"}
MAX_LABELS = 32
LABELS: Schema = {
    "type": "object",
    "maxProperties": MAX_LABELS,
    "propertyNames": {"pattern": LABEL_NAME.pattern},
    "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_VALUE},
    "description": "Label names are lowercase letters, digits and '_', not starting with "
    "a digit (as in Prometheus, lowercase only).",
}
"""Labels of machines, rule scopes and silences, as services.machines.check_labels
checks them."""
LABEL_SELECTOR: Schema = {
    "type": "string",
    "maxLength": 4096,
    "description": "Only those with every one of these labels: name:value pairs separated "
    "by commas, e.g. env:prod,role:db (a value cannot hold a comma).",
}
MAX_CURSOR = 1024
_CURSOR = re.compile(r"^[A-Za-z0-9_-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ID_FILTER: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_ID, "pattern": ID_PATTERN}


def invalid(name: str, message: str) -> ValidationError:
    return ValidationError([FieldError(name, message)], what="query")


def only(call: Call, allowed: Collection[str]) -> None:
    """Refuse unknown and repeated parameters (a typo would otherwise filter nothing)."""
    params = call.request.query_params
    for name in params:
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise invalid(name, f"unknown parameter (known: {known})")
        if len(params.getlist(name)) > 1:
            raise invalid(name, "given more than once")


def limit(call: Call, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    text = call.query("limit")
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= maximum):
        raise invalid("limit", f"expected an integer from 1 to {maximum}")
    return int(text)


def since(call: Call, name: str = "since") -> datetime | None:
    text = call.query(name)
    if text is None:
        return None
    try:
        return parse_datetime(text)
    except (TypeError, ValueError) as error:
        raise invalid(name, str(error)) from None


def boolean(call: Call, name: str) -> bool | None:
    text = call.query(name)
    if text is None:
        return None
    if text not in ("true", "false"):
        raise invalid(name, "expected true or false")
    return text == "true"


def choice(call: Call, name: str, cls: type[E], allowed: Collection[E] | None = None) -> E | None:
    text = call.query(name)
    if text is None:
        return None
    members = list(allowed) if allowed is not None else list(cls)
    for member in members:
        if member.value == text:
            return member
    choices = ", ".join(str(m.value) for m in members)
    raise invalid(name, f"{text!r} is not one of {choices}")


def identifier(call: Call, name: str) -> str | None:
    """An id to filter by; an unknown one simply matches nothing."""
    text = call.query(name)
    if text is None:
        return None
    if len(text) > MAX_ID or not _ID.match(text):
        raise invalid(name, f"expected an id (1 to {MAX_ID} visible ASCII characters)")
    return text


def enum_schema(values: Collection[enum.Enum], description: str = "") -> Schema:
    schema: Schema = {"type": "string", "enum": [m.value for m in values]}
    if description:
        schema["description"] = description
    return schema


def label_selector(call: Call, name: str = "labels") -> Labels | None:
    """``name:value,name2:value2``: every label must be there with that value."""
    text = call.query(name)
    if text is None:
        return None
    pairs: dict[str, str] = {}
    for item in text.split(","):
        label, sep, value = item.partition(":")
        if not sep or not LABEL_NAME.match(label):
            raise invalid(name, f"{item[:50]!r} is not name:value (e.g. env:prod)")
        if label in pairs:
            raise invalid(name, f"label {label!r} is given twice")
        if len(value) > MAX_LABEL_VALUE:
            raise invalid(name, f"the value of {label!r} is longer than {MAX_LABEL_VALUE}")
        pairs[label] = value
    if len(pairs) > MAX_LABELS:
        raise invalid(name, f"at most {MAX_LABELS} labels")
    return tuple(sorted(pairs.items()))


def make_cursor(key: tuple[str, str]) -> str:
    """An opaque cursor for a keyset position: unpadded base64url of a JSON pair."""
    raw = json.dumps(list(key), separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def cursor(call: Call, name: str = "cursor") -> tuple[str, str] | None:
    """The position a :func:`make_cursor` cursor holds; anything else is a 422."""
    text = call.query(name)
    if text is None:
        return None
    key = parse_cursor(text)
    if key is None:
        raise invalid(name, "not a cursor this list gave (start again without one)")
    return key


def parse_cursor(text: str) -> tuple[str, str] | None:
    """The position of a :func:`make_cursor` cursor, or ``None`` for anything else."""
    if len(text) > MAX_CURSOR or not _CURSOR.match(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError):
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(part, str) for part in value)
        and 0 < len(value[1]) <= MAX_ID
        and all(_storable(part) for part in value)
    ):
        return value[0], value[1]
    return None


def _storable(text: str) -> bool:
    """No control character (PostgreSQL refuses NUL) and no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return _CONTROL.search(text) is None
