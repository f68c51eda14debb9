"""The skip lists and the settings' own validation."""

from __future__ import annotations

import os
from collections.abc import Iterable
from fnmatch import fnmatchcase

import psutil
import pytest

from lunasentri_core import Reading, Target
from lunasentri_psutil import (
    DEFAULT_SKIP_FSTYPES,
    DEFAULT_SKIP_NICS,
    PsutilCollector,
    PsutilSettings,
)

TARGET = Target(machine_id="local")


def label_values(readings: Iterable[Reading], metric: str, label: str) -> set[str]:
    return {dict(r.labels)[label] for r in readings if r.metric == metric}


def nics(settings: PsutilSettings) -> set[str]:
    return label_values(PsutilCollector(settings).collect(TARGET), "net.rx_bytes", "nic")


def mounts(settings: PsutilSettings) -> set[str]:
    return label_values(PsutilCollector(settings).collect(TARGET), "disk.total", "mount")


def test_loopback_is_skipped_by_default() -> None:
    all_nics = set(psutil.net_io_counters(pernic=True))
    loopback = {n for n in all_nics if any(fnmatchcase(n, p) for p in DEFAULT_SKIP_NICS)}
    assert nics(PsutilSettings()) == all_nics - loopback


def test_skip_nics_takes_exact_names_and_patterns() -> None:
    all_nics = set(psutil.net_io_counters(pernic=True))
    assert nics(PsutilSettings(skip_nics=())) == all_nics
    assert nics(PsutilSettings(skip_nics=("*",))) == set()
    some = sorted(all_nics)[0]
    assert nics(PsutilSettings(skip_nics=(some,))) == all_nics - {some}
    assert nics(PsutilSettings(skip_nics=(some[0] + "*",))) == {
        n for n in all_nics if not n.startswith(some[0])
    }


def test_skipped_nics_have_no_rates_either() -> None:
    collector = PsutilCollector(PsutilSettings(skip_nics=("*",)))
    collector.collect(TARGET)
    assert not [r for r in collector.collect(TARGET) if r.metric.startswith("net.")]


@pytest.mark.skipif(os.name != "posix", reason="'/' is a POSIX mount point")
def test_skip_mounts_and_fstypes() -> None:
    root_type = next(p.fstype for p in psutil.disk_partitions(all=True) if p.mountpoint == "/")
    assert "/" in mounts(PsutilSettings())
    assert "/" not in mounts(PsutilSettings(skip_mounts=("/",)))
    assert "/" not in mounts(PsutilSettings(skip_fstypes=(*DEFAULT_SKIP_FSTYPES, root_type)))
    assert mounts(PsutilSettings(skip_mounts=("*",))) == set()


def test_an_empty_skip_list_measures_pseudo_filesystems_too() -> None:
    listed = {p.mountpoint for p in psutil.disk_partitions(all=True)}
    measured = mounts(PsutilSettings(skip_fstypes=(), skip_mounts=()))
    assert measured <= listed
    assert len(measured) >= len(mounts(PsutilSettings()))


def test_mounts_lists_what_is_measured() -> None:
    collector = PsutilCollector()
    assert set(collector.mounts()) == mounts(PsutilSettings())


def test_defaults() -> None:
    settings = PsutilSettings()
    assert settings.per_cpu is False
    assert {"proc", "sysfs", "tmpfs", "devtmpfs", "overlay", "squashfs"} <= set(
        settings.skip_fstypes
    )
    assert settings.skip_nics == DEFAULT_SKIP_NICS


def test_lists_are_converted_to_tuples() -> None:
    settings = PsutilSettings(skip_nics=["docker*", "veth*"])
    assert settings.skip_nics == ("docker*", "veth*")


def test_a_bare_string_is_not_taken_as_a_list_of_letters() -> None:
    with pytest.raises(TypeError, match="not the string 'lo'"):
        PsutilSettings(skip_nics="lo")


@pytest.mark.parametrize("bad", ["", 3, None])
def test_entries_must_be_non_empty_strings(bad: object) -> None:
    with pytest.raises(ValueError, match=r"skip_mounts\[1\]: expected a non-empty string"):
        PsutilSettings(skip_mounts=("/a", bad))  # type: ignore[arg-type]


def test_per_cpu_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="per_cpu"):
        PsutilSettings(per_cpu="yes")  # type: ignore[arg-type]
