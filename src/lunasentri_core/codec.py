"""JSON in and out: the one cattrs converter that owns (de)serialization.

Decoding is strict: no type coercion (``"12"`` is not a number, ``1`` is not a
boolean), unknown keys are rejected, and every problem is reported as a
:class:`~lunasentri_core.errors.FieldError` whose path names the field, e.g.
``samples[3].metrics.cpu.percent: expected a number``.

The wire form of a sample is compact: plain readings are ``name: value``, labelled
ones a list of ``{"labels": {...}, "value": v}``::

    {"timestamp": "2026-11-23T16:00:00Z",
     "metrics": {"cpu.percent": 12.5,
                 "disk.used": [{"labels": {"mount": "/"}, "value": 1.2e10}]}}
"""

from __future__ import annotations

import enum
import json
import linecache
import math
import os
import re
from collections import abc
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from lunasentri_core.errors import FieldError, ValidationError
from lunasentri_core.model import (
    LABEL_NAME,
    MAX_LABEL_NAME,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_METRIC_NAME,
    METRIC_NAME,
    Labels,
    Reading,
    Sample,
    reading_columns,
    to_labels,
)
from lunasentri_core.samples import ReadingColumns, ReadingKey

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


class Expected(TypeError):
    """The value has the wrong JSON type; the message is what was expected."""


# --------------------------------------------------------------------------- scalars


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise Expected("expected a string")
    return value


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise Expected("expected an integer")
    return value


def _structure_float(value: object, _: type) -> float:
    if not _is_number(value):
        raise Expected("expected a number")
    result = float(value)  # type: ignore[arg-type]
    if not math.isfinite(result):
        raise Expected("expected a finite number")
    return result


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise Expected("expected a boolean (true or false)")
    return value


def _structure_path(value: object, _: type) -> Path:
    if isinstance(value, os.PathLike):
        return Path(value)
    return Path(_structure_str(value, str))


def parse_datetime(value: object) -> datetime:
    """An ISO 8601 string with a timezone, or seconds since the Unix epoch."""
    if _is_number(value):
        try:
            return datetime.fromtimestamp(float(value), UTC)  # type: ignore[arg-type]
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"timestamp {value!r} is out of range") from None
    if not isinstance(value, str):
        raise Expected("expected a timestamp (ISO 8601 string or epoch seconds)")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no timezone (add 'Z' or '+00:00')")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. year 1 at +14:00 is before datetime.min in UTC
        raise ValueError(f"timestamp {value!r} is out of range") from None


def parse_duration(value: object) -> timedelta:
    """Seconds as a number, or a string such as ``"30s"``, ``"5m"``, ``"2h"``, ``"7d"``."""
    if _is_number(value):
        seconds = float(value)  # type: ignore[arg-type]
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise Expected("expected a duration (seconds, or a string like '30s', '5m', '7d')")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be a non-negative finite number")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {value!r} is out of range") from None


def format_duration(value: timedelta) -> str | float:
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return seconds


def _structure_labels(value: object, _: type) -> Labels:
    if not isinstance(value, Mapping):
        raise Expected("expected an object of label names to string values")
    errors: list[Exception] = []
    for key, label_value in value.items():
        if not isinstance(label_value, str):
            if key == "":  # as a path step it would read "labels.", naming nothing
                errors.append(Expected("the label with the empty name '': expected a string"))
                continue
            error = Expected("expected a string")
            error.__notes__ = [IterableValidationNote(f"label {key!r}", key, str)]
            errors.append(error)
    if errors:
        raise IterableValidationError("invalid labels", errors, dict)
    return to_labels(value)


def _structure_enum(value: object, cls: type[enum.Enum]) -> enum.Enum:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"expected one of {choices}") from None


def _homogeneous_sequence(t: Any) -> bool:
    if t == Labels:  # a tuple of pairs in Python, an object on the wire
        return False
    origin, args = get_origin(t), get_args(t)
    if origin is tuple:
        return len(args) == 2 and args[1] is Ellipsis
    return origin in (list, abc.Sequence) and len(args) == 1


def _sequence_hook_factory(t: Any, converter: cattrs.Converter) -> Callable[[object, type], Any]:
    # cattrs would iterate a string into its characters; a list is required instead.
    element = get_args(t)[0]
    build = list if get_origin(t) is list else tuple

    def structure(value: object, _: type) -> Any:
        if not isinstance(value, list | tuple):
            raise Expected("expected a list")
        items, errors = [], []
        for index, item in enumerate(value):
            try:
                items.append(converter.structure(item, element))
            except Exception as error:
                error.__notes__ = [IterableValidationNote(f"index {index}", index, element)]
                errors.append(error)
        if errors:
            raise IterableValidationError("invalid list", errors, t)
        return build(items)

    return structure


# --------------------------------------------------------------------------- samples


@attrs.frozen
class _LabelledValue:
    value: float
    labels: Labels = ()


def _structure_sample_metrics(converter: cattrs.Converter, metrics: object) -> tuple[Reading, ...]:
    if not isinstance(metrics, Mapping):
        raise Expected("expected an object of metric names to values")
    readings: list[Reading] = []
    errors: list[Exception] = []
    for name, raw in metrics.items():
        try:
            readings.extend(_readings_of(converter, name, raw))
        except Exception as error:
            error.__notes__ = [IterableValidationNote(f"metric {name!r}", name, float)]
            errors.append(error)
    if errors:
        raise IterableValidationError("invalid metrics", errors, dict)
    return tuple(readings)


def _readings_of(converter: cattrs.Converter, name: str, raw: object) -> list[Reading]:
    if isinstance(raw, list):
        items = converter.structure(raw, list[_LabelledValue])
        return [Reading(name, item.value, item.labels) for item in items]
    return [Reading(name, _structure_float(raw, float))]


def _sample_hook(
    converter: cattrs.Converter, *, fast: bool = True
) -> Callable[[object, type], Sample]:
    def structure(data: object, _: type) -> Sample:
        if fast:
            try:
                sample = _fast_sample(data)
            except Exception:  # whatever it is, the general path names it properly
                sample = None
            if sample is not None:
                return sample
        if not isinstance(data, Mapping):
            raise Expected("expected an object with 'timestamp' and 'metrics'")
        errors: list[Exception] = []
        timestamp: datetime | None = None
        readings: tuple[Reading, ...] = ()
        errors.extend(
            _noted(KeyError(key), key) for key in ("timestamp", "metrics") if key not in data
        )
        extra = set(data) - {"timestamp", "metrics"}
        if extra:
            errors.append(ForbiddenExtraKeysError("", Sample, extra))
        if "timestamp" in data:
            try:
                timestamp = parse_datetime(data["timestamp"])
            except Exception as error:
                errors.append(_noted(error, "timestamp"))
        if "metrics" in data:
            try:
                readings = _structure_sample_metrics(converter, data["metrics"])
            except Exception as error:
                errors.append(_noted(error, "metrics"))
        if errors or timestamp is None:
            raise ClassValidationError("invalid sample", errors, Sample)
        return Sample(timestamp, readings)

    return structure


# Ingest decodes hundreds of thousands of readings per second, and the general
# path above costs several microseconds per reading (cattrs dispatch, attrs
# validators). The fast path below handles the common, well-formed sample with
# plain type checks and caches of names already validated; anything unusual or
# wrong returns None and goes through the general path, so error messages stay
# exactly the same.

_CACHE_LIMIT = 10_000
_valid_metrics: set[str] = set()
_valid_labels: dict[tuple[tuple[str, str], ...], Labels] = {}
_new_object = object.__new__
# Samples from the fast path are built without running Sample's converter and
# validator again: their readings were just checked (with cached results), and
# they stay in columns (ReadingColumns), with no Reading object per value.
_set_timestamp = Sample.__dict__["timestamp"].__set__
_set_readings = Sample.__dict__["readings"].__set__
if tuple(a.name for a in attrs.fields(Sample)) != ("timestamp", "readings"):
    raise ImportError("codec's fast sample path does not know Sample's fields")


def _known_metric(name: object) -> bool:
    if name in _valid_metrics:
        return True
    if type(name) is not str or len(name) > MAX_METRIC_NAME or not METRIC_NAME.match(name):
        return False
    if len(_valid_metrics) >= _CACHE_LIMIT:
        _valid_metrics.clear()
    _valid_metrics.add(name)
    return True


def _known_labels(raw: dict[Any, Any]) -> Labels | None:
    key = tuple(raw.items())
    try:
        found = _valid_labels.get(key)
    except TypeError:  # an unhashable value, so not a string
        return None
    if found is not None:
        return found
    if len(key) > MAX_LABELS:
        return None
    for name, value in key:
        if (
            type(name) is not str
            or type(value) is not str
            or len(name) > MAX_LABEL_NAME
            or not LABEL_NAME.match(name)
            or len(value) > MAX_LABEL_VALUE
        ):
            return None
    labels = tuple(sorted(key))
    if len(_valid_labels) >= _CACHE_LIMIT:
        _valid_labels.clear()
    _valid_labels[key] = labels
    return labels


def _fast_value(raw: object) -> float | None:
    kind = type(raw)
    if kind is float:
        value: float = raw  # type: ignore[assignment]
    elif kind is int:
        try:
            value = float(raw)  # type: ignore[arg-type]
        except OverflowError:
            return None
    else:
        return None
    return value if value - value == 0.0 else None  # not nan, not infinite


def _fast_sample(data: object) -> Sample | None:
    """A well-formed sample decoded cheaply, or ``None`` for the general path.

    The per-reading checks are written out inline (no helper call per reading):
    this loop runs for every reading the server ingests.
    """
    if type(data) is not dict or len(data) != 2:
        return None
    metrics = data.get("metrics")
    stamp = data.get("timestamp")
    if type(metrics) is not dict or stamp is None:
        return None
    timestamp = parse_datetime(stamp)  # in UTC, as Sample's converter would make it
    keys: list[ReadingKey] = []
    values: list[float] = []
    add_key, add_value = keys.append, values.append
    valid_metrics, valid_labels = _valid_metrics, _valid_labels
    for name, raw in metrics.items():
        if name not in valid_metrics and not _known_metric(name):
            return None
        if type(raw) is not list:
            # A finite float, checked inline as the common case (inf - inf is nan).
            value = raw if type(raw) is float and raw - raw == 0.0 else _fast_value(raw)
            if value is None:
                return None
            add_key((name, ()))
            add_value(value)
            continue
        first = len(keys)
        for item in raw:
            if type(item) is not dict:
                return None
            value = item.get("value")
            if type(value) is not float or value - value != 0.0:
                value = _fast_value(value)
                if value is None:
                    return None
            size = len(item)
            if size == 1:
                labels: Labels | None = ()
            else:
                names = item.get("labels")
                if size != 2 or type(names) is not dict:
                    return None
                # A TypeError here (an unhashable value) sends the sample to the general path.
                labels = valid_labels.get(tuple(names.items())) or _known_labels(names)
                if labels is None:
                    return None
            add_key((name, labels))  # type: ignore[arg-type]
            add_value(value)
        # Metric names are unique (object keys), so a series can only repeat
        # inside one metric's list: Sample's own check is not needed.
        if len(set(keys[first:])) != len(keys) - first:
            return None
    sample: Sample = _new_object(Sample)
    _set_timestamp(sample, timestamp)
    _set_readings(sample, ReadingColumns(tuple(keys), tuple(values)))
    return sample


def fast_samples(data: object) -> tuple[Sample, ...] | None:
    """The samples of an ingest body ``{"samples": [...]}`` on the fast path.

    ``None`` when anything about ``data`` is unusual or wrong: the caller then
    decodes it on the general path, which names the problem.
    """
    if type(data) is not dict or len(data) != 1:
        return None
    items = data.get("samples")
    if type(items) is not list:
        return None
    samples = []
    previous: tuple[dict[str, Any], tuple[ReadingKey, ...]] | None = None
    try:
        for item in items:
            sample = None if previous is None else _repeated_sample(item, *previous)
            if sample is None:
                sample = _fast_sample(item)
                if sample is None:
                    return None
            samples.append(sample)
            readings = sample.readings
            assert isinstance(readings, ReadingColumns)
            previous = item["metrics"], readings.keys
    except Exception:  # whatever it is, the general path names it properly
        return None
    return tuple(samples)


def _repeated_sample(
    data: object, shape: dict[str, Any], keys: tuple[ReadingKey, ...]
) -> Sample | None:
    """A sample with the same metrics and labels, in the same order, as the one before.

    An agent's samples usually repeat their series: then only the values need
    checking, and the sample shares the previous one's series keys (the same
    tuple, which lets storage and alert evaluation reuse what they derived from
    it). ``None`` when anything differs: :func:`_fast_sample` then decides.
    """
    if type(data) is not dict or len(data) != 2:
        return None
    metrics = data.get("metrics")
    stamp = data.get("timestamp")
    if type(metrics) is not dict or stamp is None or len(metrics) != len(shape):
        return None
    values: list[float] = []
    add_value = values.append
    for (name, raw), (known_name, known_raw) in zip(metrics.items(), shape.items(), strict=True):
        if name != known_name or (type(raw) is list) is not (type(known_raw) is list):
            return None
        if type(raw) is not list:
            value = raw if type(raw) is float and raw - raw == 0.0 else _fast_value(raw)
            if value is None:
                return None
            add_value(value)
            continue
        if len(raw) != len(known_raw):
            return None
        for item, known in zip(raw, known_raw, strict=True):
            # Same size and same labels: an item of the shape has exactly
            # "value", or "value" and "labels"; a wrong value is caught below.
            if (
                type(item) is not dict
                or len(item) != len(known)
                or item.get("labels") != known.get("labels")
            ):
                return None
            value = item.get("value")
            if type(value) is not float or value - value != 0.0:
                value = _fast_value(value)
                if value is None:
                    return None
            add_value(value)
    sample: Sample = _new_object(Sample)
    _set_timestamp(sample, parse_datetime(stamp))
    _set_readings(sample, ReadingColumns(keys, tuple(values)))
    return sample


def _noted(error: Exception, name: str) -> Exception:
    error.__notes__ = [cattrs.errors.AttributeValidationNote(f"field {name}", name, object)]
    return error


def _unstructure_sample(sample: Sample) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for (metric, labels), value in zip(*reading_columns(sample.readings), strict=True):
        if not labels and metric not in metrics:
            metrics[metric] = value
            continue
        # A metric with labelled series (or several series) is a list of entries.
        entries = metrics.setdefault(metric, [])
        if not isinstance(entries, list):
            entries = metrics[metric] = [{"labels": {}, "value": entries}]
        entries.append({"labels": dict(labels), "value": value})
    return {"timestamp": sample.timestamp.isoformat(), "metrics": metrics}


# --------------------------------------------------------------------------- converter


def make_converter(*, fast_samples: bool = True) -> cattrs.Converter:
    """Build the strict converter. Classes know nothing of it; hooks live here.

    :param fast_samples: Decode well-formed samples on a fast path (the same
        results and errors; off only to test that it is).
    """
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(bool, _structure_bool)
    # StrEnum and IntEnum are registered by name because their MRO puts str/int
    # before Enum, and singledispatch would otherwise pick the scalar hook.
    for base in (enum.StrEnum, enum.IntEnum, enum.Enum):
        converter.register_structure_hook(base, _structure_enum)
        converter.register_unstructure_hook(base, lambda v: v.value)
    converter.register_structure_hook(datetime, lambda v, _: parse_datetime(v))
    converter.register_structure_hook(timedelta, lambda v, _: parse_duration(v))
    converter.register_structure_hook(Path, _structure_path)
    converter.register_structure_hook_func(lambda t: t == Labels, _structure_labels)
    converter.register_structure_hook_factory(
        _homogeneous_sequence, lambda t: _sequence_hook_factory(t, converter)
    )
    converter.register_structure_hook(Sample, _sample_hook(converter, fast=fast_samples))
    converter.register_structure_hook(
        _LabelledValue,
        make_dict_structure_fn(_LabelledValue, converter, _cattrs_forbid_extra_keys=True),
    )

    converter.register_unstructure_hook(datetime, lambda v: v.isoformat())
    converter.register_unstructure_hook(timedelta, format_duration)
    converter.register_unstructure_hook(Path, str)
    converter.register_unstructure_hook_func(lambda t: t == Labels, dict)
    converter.register_unstructure_hook(Sample, _unstructure_sample)
    return converter


converter = make_converter()


def decode(
    data: object, cls: type[T], *, what: str = "input", conv: cattrs.Converter | None = None
) -> T:
    """Structure ``data`` into ``cls``, raising :class:`ValidationError` with field paths."""
    try:
        return (conv or converter).structure(data, cls)
    except Exception as error:
        raise ValidationError(field_errors(error), what=what) from None


def decode_json(raw: bytes | str, cls: type[T], *, what: str = "input") -> T:
    """Parse JSON text and decode it; malformed JSON is a :class:`ValidationError` too."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValidationError([FieldError("", f"malformed JSON: {error}")], what=what) from None
    return decode(data, cls, what=what)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def encode(obj: object) -> Any:
    """Turn a model object into JSON-ready primitives."""
    return converter.unstructure(obj)


def encode_json(obj: object) -> str:
    return json.dumps(encode(obj), separators=(",", ":"), allow_nan=False)


# --------------------------------------------------------------------------- error paths


def field_errors(error: BaseException, path: str = "") -> list[FieldError]:
    """Flatten a (possibly nested) cattrs error into path-named field errors."""
    if isinstance(error, ClassValidationError | IterableValidationError):
        found: list[FieldError] = []
        with_notes, without_notes = error.group_exceptions()
        for inner, note in with_notes:
            key = note.name if hasattr(note, "name") else note.index
            found.extend(field_errors(inner, _join(path, key)))
        built = error.cl if isinstance(error, ClassValidationError) else None
        for inner in without_notes:
            field = _validated_field(inner, built)
            found.extend(field_errors(inner, _join(path, field) if field else path))
        return found
    if isinstance(error, ValueError | TypeError) and isinstance(_arg(error, 1), attrs.Attribute):
        # An attrs validator's convention: (message, attribute, ...).
        return [FieldError(_join(path, error.args[1].name), str(error.args[0]))]
    if isinstance(error, ForbiddenExtraKeysError):
        return [FieldError(_join(path, key), "unknown field") for key in sorted(error.extra_fields)]
    return [FieldError(path, _message(error))]


_CONVERTER_CALL = re.compile(r"__attr_converter_(\w+)\(")


def _validated_field(error: BaseException, cls: type[Any] | None) -> str | None:
    """The field of ``cls`` whose validator raised ``error``, if one did.

    A validator or converter that raises a plain exception (``ValueError("must be positive")``)
    rather than attrs' ``(message, attribute)`` form reaches cattrs from the class's
    ``__init__``, with no field attached. Validators receive the attribute as an
    argument, so the innermost frame holding one of ``cls``'s attributes names it.
    """
    if cls is None or not attrs.has(cls) or isinstance(_arg(error, 1), attrs.Attribute):
        return None
    fields = attrs.fields(cls)
    init = getattr(cls.__init__, "__code__", None)
    found = None
    traceback = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        for value in frame.f_locals.values():
            if isinstance(value, attrs.Attribute) and any(value is f for f in fields):
                found = value.name
        if found is None and frame.f_code is init:
            # A converter gets no attribute; attrs' generated __init__ calls the
            # one of field x as __attr_converter_x(...) on the line that failed.
            line = linecache.getline(frame.f_code.co_filename, traceback.tb_lineno)
            converted = _CONVERTER_CALL.search(line)
            if converted is not None and any(f.name == converted[1] for f in fields):
                found = converted[1]
        traceback = traceback.tb_next
    return found


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _arg(error: BaseException, index: int) -> object:
    return error.args[index] if len(error.args) > index else None


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError):
        return "required field is missing"
    if isinstance(error, Expected | ValueError):
        return str(error)
    if isinstance(error, TypeError):
        return f"wrong type ({error})"
    return f"{type(error).__name__}: {error}"
