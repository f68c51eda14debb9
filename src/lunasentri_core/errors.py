"""Exceptions a user or a plugin author may catch.

Every error that reaches a user carries a message that says what was wrong and
where; none of them should need a traceback to be understood.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs


class LunaSentriError(Exception):
    """Base class of every error LunaSentri raises on purpose."""


@attrs.frozen
class FieldError:
    """One problem with one field of some input.

    ``path`` names the field, like ``samples[3].metrics.cpu.percent``.
    """

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidValue(ValueError):
    """A validator's refusal of one attribute's value, naming the attribute.

    Raised as ``InvalidValue("must be positive", attribute)`` in an attrs validator;
    decoding reports it at the attribute's full path (``collect.interval: must be
    positive``), as attrs' own validators are (they pass the attribute second too).
    """

    def __init__(self, message: str, attribute: attrs.Attribute[Any]) -> None:
        super().__init__(message, attribute)
        self.message = message
        self.field = attribute.name

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ValidationError(LunaSentriError, ValueError):
    """Input did not match what was expected; ``errors`` lists every problem found."""

    def __init__(self, errors: Sequence[FieldError], what: str = "input") -> None:
        self.errors = tuple(errors)
        self.what = what
        super().__init__(self._describe())

    def _describe(self) -> str:
        lines = [str(e) for e in self.errors]
        if len(lines) == 1:
            return f"invalid {self.what}: {lines[0]}"
        return f"invalid {self.what}:\n" + "\n".join(f"  {line}" for line in lines)

    @property
    def first_path(self) -> str | None:
        return self.errors[0].path if self.errors else None


class ConfigError(LunaSentriError):
    """The settings (TOML file, environment or arguments) are wrong."""


class PluginError(LunaSentriError):
    """A plugin could not be loaded, validated or used."""


class StorageError(LunaSentriError):
    """The storage backend cannot be opened or used (path, permissions, server)."""


class StorageUnavailable(StorageError):
    """The storage is there but cannot serve now: locked past its busy timeout, full,
    or unreachable. Nothing about the request is wrong; the same request may succeed
    later (the server answers 503 with ``Retry-After``)."""


class NotFoundError(LunaSentriError, LookupError):
    """A record asked for by id does not exist (or is not visible to the caller)."""


class ConflictError(LunaSentriError):
    """A change conflicts with existing state (a duplicate name, a record in use)."""


class SeriesLimitError(LunaSentriError):
    """A batch would give a machine more series than the storage limit allows.

    Raised by a store with the ``series-limit`` capability; nothing of the batch
    is stored. ``new`` series were wanted on top of those the machine has.
    """

    def __init__(self, machine_id: str, limit: int, new: int) -> None:
        super().__init__(
            f"this batch would add {new} new series to machine {machine_id}, taking it past "
            f"its limit of {limit} series (storage.max_series_per_machine); "
            "nothing of the batch was stored"
        )
        self.machine_id = machine_id
        self.limit = limit
        self.new = new


class InUseError(ConflictError):
    """A record cannot be deleted because others use it; ``users`` lists them.

    ``users`` maps a kind of record (``"monitors"``, ``"discovery_profiles"``) to
    the ids of those that use it, so the caller can see what to change first.
    """

    def __init__(self, what: str, users: Mapping[str, Sequence[str]]) -> None:
        self.what = what
        self.users = {kind: list(ids) for kind, ids in users.items() if ids}
        listed = "; ".join(
            f"{len(ids)} {kind.replace('_', ' ')} ({', '.join(ids)})"
            for kind, ids in self.users.items()
        )
        super().__init__(f"{what} is in use and cannot be deleted: used by {listed}")
