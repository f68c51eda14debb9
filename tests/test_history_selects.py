"""HistoryQuery.selects: which series of the metric a history query asks for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lunasentri_core.model import HistoryQuery

START = datetime(2026, 1, 1, tzinfo=UTC)


def query(labels: dict[str, str] | None = None, *, exact: bool = False) -> HistoryQuery:
    return HistoryQuery(
        "m",
        "cpu.percent",
        START,
        START + timedelta(hours=1),
        timedelta(minutes=1),
        labels=labels,
        exact=exact,
    )


WHOLE: tuple[tuple[str, str], ...] = ()
CORE = (("cpu", "3"),)
CORE_ON_NODE = (("cpu", "3"), ("node", "a"))


@pytest.mark.parametrize(
    ("asked", "selected"),
    [
        (query(), [WHOLE, CORE, CORE_ON_NODE]),
        (query({"cpu": "3"}), [CORE, CORE_ON_NODE]),
        (query(exact=True), [WHOLE]),
        (query({}, exact=True), [WHOLE]),
        (query({"cpu": "3"}, exact=True), [CORE]),
        (query({"node": "a", "cpu": "3"}, exact=True), [CORE_ON_NODE]),
        (query({"cpu": "4"}, exact=True), []),
    ],
)
def test_selects_subsets_or_exactly_the_labels(
    asked: HistoryQuery, selected: list[tuple[tuple[str, str], ...]]
) -> None:
    assert [labels for labels in (WHOLE, CORE, CORE_ON_NODE) if asked.selects(labels)] == selected
