"""Settings of the psutil collector, structured from ``[plugins.psutil]``."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

DEFAULT_SKIP_FSTYPES: tuple[str, ...] = (
    # Kernel and virtual filesystems: no disk behind them.
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.gvfsd-fuse",
    "fuse.lxcfs",
    "fuse.portal",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    # Layered or read-only images: on a container host every container adds one,
    # and their usage repeats the disk underneath.
    "aufs",
    "overlay",
    "squashfs",
    "iso9660",
)
"""Filesystem types skipped unless ``skip_fstypes`` says otherwise."""

DEFAULT_SKIP_MOUNTS: tuple[str, ...] = (
    "/proc/*",
    "/sys/*",
    "/dev/*",
    "/var/lib/docker/*",
    "/var/lib/containers/*",
    "/var/lib/kubelet/*",
    "/snap/*",
    # macOS: APFS helper volumes sharing the container of "/" and /System/Volumes/Data.
    "/System/Volumes/Hardware",
    "/System/Volumes/iSCPreboot",
    "/System/Volumes/Preboot",
    "/System/Volumes/Update",
    "/System/Volumes/Update/*",
    "/System/Volumes/VM",
    "/System/Volumes/xarts",
)
"""Mount-point patterns (``fnmatch``, case-sensitive) skipped by default."""

DEFAULT_SKIP_NICS: tuple[str, ...] = ("lo", "lo0", "Loopback*")
"""Interface-name patterns skipped by default: loopback on Linux, BSD/macOS, Windows."""


def _names(value: Iterable[str]) -> tuple[str, ...]:
    # A bare string would otherwise be split into one-letter patterns.
    if isinstance(value, str):
        raise TypeError(f"expected a list of strings, not the string {value!r}")
    return tuple(value)


def _check_names(
    _: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"{attribute.name}[{index}]: expected a non-empty string, got {name!r}"
            )


@attrs.frozen
class PsutilSettings:
    """What the psutil collector measures.

    Each skip list replaces its default when given; copy the default
    (``DEFAULT_SKIP_FSTYPES`` ...) to extend it instead.
    """

    per_cpu: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    """Also emit ``cpu.percent`` per logical CPU, labelled ``cpu``."""
    skip_fstypes: tuple[str, ...] = attrs.field(
        default=DEFAULT_SKIP_FSTYPES, converter=_names, validator=_check_names
    )
    """Filesystem types whose mounts are not measured (exact names)."""
    skip_mounts: tuple[str, ...] = attrs.field(
        default=DEFAULT_SKIP_MOUNTS, converter=_names, validator=_check_names
    )
    """Mount points not measured (``fnmatch`` patterns)."""
    skip_nics: tuple[str, ...] = attrs.field(
        default=DEFAULT_SKIP_NICS, converter=_names, validator=_check_names
    )
    """Network interfaces not measured (``fnmatch`` patterns)."""
