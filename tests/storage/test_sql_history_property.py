"""History answers equal a naive reference, whatever was written, retried and compacted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lunasentri_core.model import Aggregation, HistoryQuery, MachineSamples, Reading, Sample, new_id
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.testing import (
    assert_history_equal,
    assert_latest_equal,
    points_of,
    reference_history,
    reference_latest,
)

T0 = datetime(2025, 6, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
SPAN_MS = 3 * 3_600_000  # three hours: several chunks, many minute buckets
SERIES = [("cpu.percent", {}), ("disk.used", {"mount": "/"}), ("disk.used", {"mount": "/home"})]

values = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@st.composite
def batches(draw: st.DrawFn, machine: str) -> list[list[MachineSamples]]:
    """1-3 batches; later ones may repeat timestamps (retries) with other values."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        samples = []
        for _ in range(draw(st.integers(0, 40))):
            at = T0 + draw(st.integers(0, SPAN_MS - 1)) * MS
            chosen = draw(st.lists(st.sampled_from(range(len(SERIES))), min_size=1, unique=True))
            readings = [Reading(SERIES[i][0], draw(values), SERIES[i][1]) for i in chosen]
            samples.append(Sample(at, readings))
        out.append([MachineSamples(machine, samples)])
    return out


@st.composite
def queries(draw: st.DrawFn, machine: str) -> HistoryQuery:
    aligned = draw(st.booleans())
    if aligned:  # the shape that rollups answer
        start = draw(st.integers(-10, 200)) * 60_000
        step = draw(st.sampled_from([1, 2, 5, 15, 60, 120])) * 60_000
    else:
        start = draw(st.integers(-60_000, SPAN_MS))
        step = draw(st.integers(1, SPAN_MS))
    end = start + draw(st.integers(1, SPAN_MS + 60_000))
    metric, labels = SERIES[draw(st.integers(0, len(SERIES) - 1))]
    return HistoryQuery(
        machine,
        metric,
        T0 + start * MS,
        T0 + end * MS,
        step * MS,
        draw(st.sampled_from(Aggregation)),
        labels=draw(st.sampled_from([None, labels])),
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_history_and_latest_match_the_reference(storage: SqlStorage, data: st.DataObject) -> None:
    machine = new_id()  # examples share the store; each gets a machine of its own
    written = data.draw(batches(machine), label="batches")
    for batch in written:
        storage.metrics.write(batch)
        if data.draw(st.booleans(), label="maintain after this batch"):
            cut = data.draw(st.integers(0, SPAN_MS + 3_600_000), label="maintain now (ms)")
            storage.metrics.maintain(T0 + cut * MS)
    points = points_of(written)
    assert_latest_equal(storage.metrics.latest([machine]), reference_latest(points, [machine]))
    asked = []
    for _ in range(4):
        query = data.draw(queries(machine), label="query")
        asked.append(query)
        answer = storage.metrics.history(query)
        assert_history_equal(
            answer,
            reference_history(points, query),
            context=f"start={query.start} step={query.step} {query.aggregation}",
        )
        # What the HTTP API serializes: the same steps, as columns.
        assert [c.to_history() for c in storage.metrics.history_columns(query)] == answer
    # Several queries in one read (what a history call with several metrics does),
    # the head rows shared: the same answers as one by one.
    with storage.metrics.history_reader() as read:
        together = [read(query) for query in [*asked, *asked]]
    assert together == [storage.metrics.history_columns(query) for query in [*asked, *asked]]
