"""Parsing a JSON request body, refusing what would fail later as a 500.

Two kinds of valid JSON cannot be handled past the parser: nesting so deep that
the parser (or anything walking the result) runs out of recursion, and lone
surrogates (``"\\ud800"``), which are valid JSON escapes but not Unicode text,
so that SQLite, the log and the JSON answer cannot encode them. Both are
refused here, once for every endpoint, naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lunasentri_core.errors import FieldError, ValidationError
from lunasentri_core.server.errors import ApiError

MAX_DEPTH = 64
"""How deeply arrays and objects may nest in a body: System.Text.Json's default."""

# A lone surrogate can only come from a \uD800-\uDFFF escape (raw UTF-8 bytes
# for one fail decoding), and deep nesting needs many brackets: most bodies are
# let through on these two searches in C, without walking the parsed result.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]', re.DOTALL)

Step = str | int
Problem = tuple[list[Step], str]
"""The steps to a bad value (innermost first) and what is wrong with it."""


def load_json(raw: bytes) -> Any:
    """The parsed body: malformed JSON or nesting deeper than :data:`MAX_DEPTH` is a 400,
    a lone surrogate in any string or key a 422; both name the field."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise _too_deep(_deep_path(raw)) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "malformed_json", f"malformed JSON: {error}") from None
    deep = raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
    if deep or _SURROGATE_ESCAPE.search(raw):
        problem = _find(data, 1)
        if problem is not None:
            steps, what = problem
            path = _path(reversed(steps))
            if what == "deep":
                raise _too_deep(path)
            raise ValidationError([FieldError(path, what)], what="request body")
    return data


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def _too_deep(path: str) -> ApiError:
    message = f"JSON nested deeper than {MAX_DEPTH} levels"
    return ApiError(400, "too_deep", f"{message} at {path}" if path else message, path)


def _find(value: object, depth: int) -> Problem | None:
    """The first lone surrogate or too deep container in ``value``, or ``None``."""
    if type(value) is str:
        return None if value.isascii() or _is_text(value) else ([], _surrogate(value))
    if type(value) is dict:
        items: Any = value.items()
    elif type(value) is list:
        items = enumerate(value)
    else:
        return None
    if depth > MAX_DEPTH:
        return [], "deep"
    for key, item in items:
        if type(key) is str and not (key.isascii() or _is_text(key)):
            return [key], "the name " + _surrogate(key)
        problem = _find(item, depth + 1)
        if problem is not None:
            problem[0].append(key)
            return problem
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _surrogate(value: str) -> str:
    found = next(c for c in value if "\ud800" <= c <= "\udfff")
    return f"contains a lone surrogate (\\u{ord(found):04x}), which is not Unicode text"


def _path(steps: Any) -> str:
    path = ""
    for step in steps:
        if isinstance(step, int):
            path += f"[{step}]"
        else:
            # A JSON answer cannot carry a lone surrogate: it is named as its escape.
            name = step.encode("utf-8", "backslashreplace").decode()
            path = f"{path}.{name}" if path else name
    return path


def _deep_path(raw: bytes) -> str:
    """The path of the first container nested deeper than :data:`MAX_DEPTH`, found by
    reading the tokens (the parser gave up on it, so there is no tree to walk)."""
    steps: list[Step | None] = []  # per open container: the current key or index
    expect_key = False
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            if len(steps) >= MAX_DEPTH:
                return _path(step for step in steps if step is not None)
            steps.append(None if token == b"{" else 0)
            expect_key = token == b"{"
        elif token in (b"]", b"}"):
            if steps:
                steps.pop()
            expect_key = False
        elif token == b",":
            top = steps[-1] if steps else None
            expect_key = not isinstance(top, int)
            if isinstance(top, int):
                steps[-1] = top + 1
        elif token == b":":
            expect_key = False
        elif expect_key and steps:
            steps[-1] = _key(token)
    return ""


def _key(token: bytes) -> str:
    try:
        return str(json.loads(token))
    except ValueError:
        return token[1:-1].decode("utf-8", "backslashreplace")
