"""What a collector plugin exchanges with the core: readings, samples, targets.

These few classes live apart from :mod:`lunasentri_core.model` so that a process
that only collects and sends (the push agent, with its collector plugins) does
not build the forty-odd classes of the server's model: each attrs class costs
memory when it is created, whether it is used or not. The model re-exports
everything here, and ``lunasentri_core`` exports the public names, so nothing
needs to import this module by name.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeAlias, overload, runtime_checkable

import attrs

if TYPE_CHECKING:
    # An annotation only: a push agent never loads the remote-host classes.
    from lunasentri_core.remote import RemoteCredential

Labels: TypeAlias = tuple[tuple[str, str], ...]
"""A series' labels as sorted ``(name, value)`` pairs, so that equal label sets are equal."""

METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
LABEL_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
MAX_LABEL_VALUE = 256
"""Characters in a label value (stricter than Mimir's 2,048: values name mounts, NICs)."""
MAX_METRIC_NAME = MAX_LABEL_VALUE
"""Characters in a metric name: as in Mimir, where the name is the value of ``__name__``."""
MAX_LABEL_NAME = 1024
"""Characters in a label name (Mimir's and Cortex's ``max_label_name_length``)."""
MAX_LABELS = 30
"""Labels of one series (Mimir's and Cortex's ``max_label_names_per_series``)."""


def new_id() -> str:
    """A fresh random identifier for a stored record: 32 hex digits (128 random bits)."""
    return os.urandom(16).hex()  # as unique as uuid4().hex, at a fifth of the cost


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_labels(value: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Labels:
    """Normalise a mapping or pairs into :data:`Labels` (sorted, string-valued)."""
    if value is None:
        return ()
    pairs = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(k), str(v)) for k, v in pairs))


def as_utc(value: datetime) -> datetime:
    """Reject naive datetimes (they are ambiguous) and normalise to UTC."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a timezone")
    return value.astimezone(UTC)


def _check_metric(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if len(value) > MAX_METRIC_NAME:
        raise ValueError(
            f"{attribute.name} {value[:40]!r}... is longer than {MAX_METRIC_NAME} characters"
        )
    if not METRIC_NAME.match(value):
        raise ValueError(
            f"{attribute.name} {value!r} is not a metric name "
            "(lowercase dotted words, e.g. 'cpu.percent')"
        )


def _check_labels(_: object, attribute: attrs.Attribute[Labels], value: Labels) -> None:
    if len(value) > MAX_LABELS:
        raise ValueError(f"{len(value)} labels; a series has at most {MAX_LABELS}")
    for name, label_value in value:
        if len(name) > MAX_LABEL_NAME:
            raise ValueError(
                f"label name {name[:40]!r}... is longer than {MAX_LABEL_NAME} characters"
            )
        if not LABEL_NAME.match(name):
            raise ValueError(f"label name {name!r} must be lowercase letters, digits or '_'")
        if len(label_value) > MAX_LABEL_VALUE:
            raise ValueError(f"label {name!r} is longer than {MAX_LABEL_VALUE} characters")


def _to_value(value: float) -> float:
    """The converter of :attr:`Reading.value`: any real number as a float, never a bool.

    ``float(True)`` is ``1.0``, so a collector handing over a flag by mistake
    would be stored as a measurement nobody chose; say ``1.0 if up else 0.0``.
    """
    if value.__class__ is float:
        return value
    if isinstance(value, bool):
        raise TypeError(
            f"value must be a number, not the bool {value!r}: "
            f"write {float(value)!r} if a number is meant"
        )
    return float(value)


def _check_finite(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number, not {value!r}")


@attrs.frozen
class Reading:
    """One measured value of one series at the sample's timestamp."""

    metric: str = attrs.field(validator=_check_metric)
    value: float = attrs.field(converter=_to_value, validator=_check_finite)
    """A real number; a ``bool`` is refused (:class:`TypeError`), not read as 1.0 or 0.0."""
    labels: Labels = attrs.field(default=(), converter=to_labels, validator=_check_labels)


ReadingKey: TypeAlias = tuple[str, Labels]
"""A reading's series within its machine: ``(metric, labels)``."""

_new_object = object.__new__
# ReadingColumns builds Readings without running their validators again.
_set_metric = Reading.__dict__["metric"].__set__
_set_value = Reading.__dict__["value"].__set__
_set_labels = Reading.__dict__["labels"].__set__
if tuple(a.name for a in attrs.fields(Reading)) != ("metric", "value", "labels"):
    raise ImportError("ReadingColumns does not know Reading's fields")


class ReadingColumns(Sequence[Reading]):
    """A sample's readings kept as two columns: series keys and values.

    What the server's ingest decoder builds. Storage and alert evaluation read
    the columns; a :class:`Reading` is built only when someone asks for one
    (iterating, indexing), so ingest creates no object per value. It is
    equal to, and hashes like, the tuple of those readings.

    Nothing is checked here: the decoder has checked names, labels, finiteness
    and that no series repeats. Anything else builds samples with
    ``Sample(timestamp, readings)``, which checks.
    """

    __slots__ = {
        "keys": "Each reading's series, ``(metric, labels)``.",
        "values": "Each reading's value, in the same order.",
    }
    keys: tuple[ReadingKey, ...]
    values: tuple[float, ...]

    def __init__(self, keys: tuple[ReadingKey, ...], values: tuple[float, ...]) -> None:
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} series keys but {len(values)} values")
        self.keys = keys
        self.values = values

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Reading]:
        return map(_reading, self.keys, self.values)

    @overload
    def __getitem__(self, index: int) -> Reading: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Reading, ...]: ...
    def __getitem__(self, index: int | slice) -> Reading | tuple[Reading, ...]:
        if isinstance(index, slice):
            return tuple(map(_reading, self.keys[index], self.values[index]))
        return _reading(self.keys[index], self.values[index])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ReadingColumns):
            return self.keys == other.keys and self.values == other.values
        if isinstance(other, tuple | list):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


def _reading(key: ReadingKey, value: float) -> Reading:
    reading: Reading = _new_object(Reading)
    _set_metric(reading, key[0])
    _set_value(reading, value)
    _set_labels(reading, key[1])
    return reading


def reading_columns(readings: Sequence[Reading]) -> tuple[Sequence[ReadingKey], Sequence[float]]:
    """``readings`` as series keys and values, without building objects where it can."""
    if type(readings) is ReadingColumns:
        return readings.keys, readings.values
    return [(r.metric, r.labels) for r in readings], [r.value for r in readings]


def _readings(value: Iterable[Reading]) -> tuple[Reading, ...]:
    if type(value) is ReadingColumns:  # checked, as every reading given to a Sample is
        pairs = zip(value.keys, value.values, strict=True)
        return tuple(Reading(metric, v, labels) for (metric, labels), v in pairs)
    return tuple(value)


@attrs.frozen
class Sample:
    """Everything a collector measured about one target at one instant.

    ``readings`` is a tuple when a sample is built by hand; samples the server
    decoded from an ingest body carry a :class:`ReadingColumns`, an equal
    read-only sequence.
    """

    timestamp: datetime = attrs.field(converter=as_utc)
    readings: Sequence[Reading] = attrs.field(converter=_readings)

    @readings.validator
    def _one_reading_per_series(
        self, attribute: attrs.Attribute[Sequence[Reading]], value: Sequence[Reading]
    ) -> None:
        if len({(r.metric, r.labels) for r in value}) != len(value):
            seen: set[tuple[str, Labels]] = set()
            for r in value:
                if (r.metric, r.labels) in seen:
                    raise ValueError(f"two readings of the same series {r.metric} {dict(r.labels)}")
                seen.add((r.metric, r.labels))


@attrs.frozen
class Target:
    """What a collector is asked to measure.

    ``host`` is ``None`` for the local machine. ``options`` carries collector-specific
    settings of this one target (e.g. a port); a collector's own settings class holds
    what applies to every target. ``credential`` is how to log in to a remote
    ``host`` (the agentless poller decrypts it for the call), ``None`` otherwise.
    """

    machine_id: str
    host: str | None = None
    labels: Labels = attrs.field(default=(), converter=to_labels)
    options: Mapping[str, Any] = attrs.field(factory=dict)
    credential: RemoteCredential | None = None


@runtime_checkable
class Collector(Protocol):
    """Measures a target and returns its readings.

    Must be safe to call again while a previous call for another target runs.
    Raising marks this one collection as failed; the hub logs it and carries on.
    """

    name: ClassVar[str]
    settings_class: ClassVar[type[Any] | None]

    def collect(self, target: Target) -> Sequence[Reading] | Awaitable[Sequence[Reading]]: ...
