"""Decoding a plugin's settings or a notifier's channel class as the hub does."""

from __future__ import annotations

import enum
import types
import typing
from collections import abc
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, TypeVar

import attrs
from cattrs.errors import ForbiddenExtraKeysError

from lunasentri_core.codec import converter, decode, field_errors

T = TypeVar("T")


def decode_settings(cls: type[T], mapping: Mapping[str, Any]) -> T:
    """Structure ``mapping`` into ``cls`` exactly as the hub does.

    ``cls`` is a plugin's ``settings_class`` (from its ``[plugins.<name>]`` table)
    or a notifier's ``channel_class`` (from a channel's ``config``): the same
    converter, so durations like ``"30s"``, unknown keys refused and validators
    run. Use it to test your class's defaults and its validators::

        with pytest.raises(ValidationError) as caught:
            decode_settings(MySettings, {"timeout": 0})
        assert caught.value.errors[0].path == "timeout"

    :returns: The instance.
    :raises ~lunasentri_core.ValidationError: listing every problem, each with the
        path of its field relative to the table (``timeout``, ``hosts[2]``); the
        hub prefixes it (``plugins.mycheck.timeout``, ``config.timeout``).
    """
    return decode(dict(mapping), cls, what=f"{cls.__name__} settings")


# --------------------------------------------------------------------------- invalid configs

_ALLOWED_ERRORS = (ValueError, TypeError, KeyError, ForbiddenExtraKeysError)
"""What decoding may raise inside its ``ValidationError``: the codec's own refusals
(``KeyError`` for a missing field, unknown keys) and validators' ``ValueError`` and
``TypeError`` (including :class:`~lunasentri_core.errors.InvalidValue`)."""
_UNKNOWN_FIELD = "lunasentri_contract_unknown_field"


@attrs.frozen
class InvalidConfig:
    """One wrong config derived from a valid one: what is wrong, and in which field."""

    description: str
    field: str
    config: Mapping[str, Any] = attrs.field(repr=False)


def invalid_configs(cls: type[Any], valid: Mapping[str, Any]) -> list[InvalidConfig]:
    """Wrong configs derived from ``valid``, each of which ``cls`` must refuse.

    From the attrs fields of ``cls``: an unknown field; each required field left
    out; each field given a value of a wrong type (where its annotation says
    what the right one is: ``str``, ``int``, ``float``, ``bool``, durations,
    enums, lists, mappings, attrs classes, and optional ones of those); and each
    string field that has a validator or a converter given an empty string.
    """
    unknown = {**valid, _UNKNOWN_FIELD: "x"}
    cases = [InvalidConfig(f"an unknown field {_UNKNOWN_FIELD!r}", _UNKNOWN_FIELD, unknown)]
    hints = _type_hints(cls)
    for field in attrs.fields(cls):
        key = field.alias or field.name
        if field.default is attrs.NOTHING and key in valid:
            rest = {k: v for k, v in valid.items() if k != key}
            cases.append(InvalidConfig(f"the required field {key!r} left out", key, rest))
        wrong = _wrong_value(hints.get(field.name, Any))
        if wrong is not _NO_VALUE:
            cases.append(
                InvalidConfig(f"{key!r} given {wrong!r} (a wrong type)", key, {**valid, key: wrong})
            )
        checked = field.validator is not None or field.converter is not None
        if checked and _is_str(hints.get(field.name, Any)):
            cases.append(InvalidConfig(f"{key!r} given ''", key, {**valid, key: ""}))
    return cases


def check_refuses_invalid_configs(cls: type[Any], valid: Mapping[str, Any], what: str) -> None:
    """Assert ``cls`` refuses every one of :func:`invalid_configs`, as the hub needs.

    Each must fail to decode with a :class:`~lunasentri_core.ValidationError`
    naming the field, and the class's validators and converters must raise
    ``ValueError`` or ``TypeError`` (anything else reads as a crash). ``what``
    names the class in the messages (``"channel class"``, ``"settings class"``).
    """
    problems = []
    for case in invalid_configs(cls, valid):
        problem = _refusal_problem(cls, case)
        if problem:
            problems.append(f"{case.description}: {problem}")
    assert not problems, f"the {what} {cls.__name__} mishandles invalid input:\n  " + "\n  ".join(
        problems
    )


def _refusal_problem(cls: type[Any], case: InvalidConfig) -> str | None:
    try:
        converter.structure(dict(case.config), cls)
    except Exception as error:  # examined below
        wrong = [
            leaf
            for leaf in _leaves(error)
            if not isinstance(leaf, _ALLOWED_ERRORS) and _raised_by(leaf, cls)
        ]
        if wrong:
            leaf = wrong[0]
            return (
                f"a validator or converter raised {type(leaf).__name__}: {leaf}; raise "
                "ValueError or TypeError (or lunasentri_core.errors.InvalidValue) so the user "
                "is told which field is wrong"
            )
        paths = [e.path for e in field_errors(error)]
        if not any(_names(path, case.field) for path in paths):
            messages = "; ".join(str(e) for e in field_errors(error))
            return f"refused, but the error does not name the field ({messages})"
        return None
    return "accepted; it must be refused with an error naming the field"


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _raised_by(error: BaseException, cls: type[Any]) -> bool:
    """Whether ``error`` came out of ``cls``'s own ``__init__`` (its validators, converters)."""
    init = getattr(cls.__init__, "__code__", None)
    traceback = error.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code is init:
            return True
        traceback = traceback.tb_next
    return False


def _names(path: str, field: str) -> bool:
    return path == field or path.startswith((f"{field}.", f"{field}["))


_NO_VALUE = object()


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: no type cases
        return {}


def _optional_of(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        return rest[0] if len(rest) == 1 else Any
    return hint


def _is_str(hint: Any) -> bool:
    return _optional_of(hint) is str


def _wrong_value(hint: Any) -> Any:
    hint = _optional_of(hint)
    origin = typing.get_origin(hint) or hint
    if hint is bool:
        return "yes"
    if hint is str:
        return 12345
    if hint in (int, float):
        return "many"
    if hint is timedelta:
        return ["1s"]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "no-such-choice"
    if isinstance(origin, type) and issubclass(origin, abc.Collection | abc.Mapping):
        return 42
    if isinstance(hint, type) and attrs.has(hint):
        return 42
    return _NO_VALUE
