"""LunaSentri collector for the size and age of files: an example plugin to copy.

Configure it in ``lunasentri.toml``::

    [plugins.filesize]
    paths = ["/var/log/syslog", "/var/lib/app/queue.db"]

For each configured path that is a regular file it reports ``file.size`` (bytes)
and ``file.mtime_age`` (seconds since the file was last modified), both labelled
with ``path``. A path that is missing or unreadable is logged and skipped: one
bad path must not cost the readings of the others.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterable
from typing import Any, ClassVar

import attrs
from lunasentri_core import Collector, Reading, Target, hookimpl

__all__ = ["FileSizeCollector", "FileSizeSettings", "lunasentri_register_collectors"]

log = logging.getLogger(__name__)

# The core refuses longer label values.
_MAX_LABEL_VALUE = 256


def _check_paths(
    _: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for path in value:
        if not path.strip():
            raise ValueError("a path must not be empty")
        if "\0" in path:
            raise ValueError(f"path {path!r} contains a NUL character")
        if len(path) > _MAX_LABEL_VALUE:
            raise ValueError(f"path {path[:40]!r}... is longer than {_MAX_LABEL_VALUE} characters")


@attrs.frozen
class FileSizeSettings:
    """``[plugins.filesize]`` in the settings file."""

    paths: tuple[str, ...] = attrs.field(default=(), validator=_check_paths)
    """The files to watch; each becomes the ``path`` label of its series."""


class FileSizeCollector:
    """Reports the size and modification age of the configured files.

    ``os.stat`` may block (a network file system), so ``collect`` is a plain
    method: the hub runs it in a worker thread. It keeps no state between calls,
    which makes it safe to call from several threads at once.
    """

    name: ClassVar[str] = "filesize"
    # Typed as the Collector protocol declares it, so the class matches the protocol.
    settings_class: ClassVar[type[Any] | None] = FileSizeSettings

    def __init__(self, settings: FileSizeSettings | None = None) -> None:
        self.settings = settings or FileSizeSettings()
        # The same file listed twice would be the same series twice.
        self._paths = tuple(dict.fromkeys(self.settings.paths))

    def collect(self, target: Target) -> list[Reading]:
        now = time.time()
        readings: list[Reading] = []
        for path in self._paths:
            readings.extend(self._measure(path, now))
        return readings

    def _measure(self, path: str, now: float) -> list[Reading]:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            log.warning("filesize: %s does not exist; skipped", path)
            return []
        except OSError as error:
            log.warning("filesize: cannot read %s (%s); skipped", path, error.strerror or error)
            return []
        if not stat.S_ISREG(info.st_mode):
            log.warning("filesize: %s is not a regular file; skipped", path)
            return []
        labels = {"path": path}
        # A modification time in the future (clock skew) counts as "just now".
        age = max(0.0, now - info.st_mtime)
        return [Reading("file.size", info.st_size, labels), Reading("file.mtime_age", age, labels)]


@hookimpl
def lunasentri_register_collectors() -> Iterable[type[Collector]]:
    return [FileSizeCollector]
