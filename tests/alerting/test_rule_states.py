"""The rule state machine (``step``) against a reference model, with hypothesis."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from lunasentri_core.model import AlertRule, AlertState, AlertStatus, Comparison, SeriesKey
from lunasentri_core.services.alerts import step

from .conftest import T0

SERIES = SeriesKey("m1", "cpu.percent")

rules = st.builds(
    AlertRule,
    id=st.just("r1"),
    owner_id=st.just("u1"),
    name=st.just("cpu"),
    metric=st.just("cpu.percent"),
    comparison=st.sampled_from(list(Comparison)),
    threshold=st.sampled_from([0.0, 50.0, 90.0]),
    for_duration=st.integers(0, 120).map(lambda s: timedelta(seconds=s)),
)
# Steps of 0-40 s between samples, values around the thresholds.
readings = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from([0.0, 49.9, 50.0, 50.1, 90.0, 95.0])),
    max_size=40,
)


def run(rule: AlertRule, seq: list[tuple[int, float]]) -> list[tuple[AlertState, bool]]:
    """The state after each reading, and whether that reading moved it."""
    current: AlertStatus | None = None
    at = T0
    out = []
    for gap, value in seq:
        at += timedelta(seconds=gap)
        new = step(rule, current, SERIES, value, at)
        if new is not None:
            current = new
        out.append((current.state if current else AlertState.OK, new is not None))
    return out


def reference(rule: AlertRule, seq: list[tuple[int, float]]) -> list[AlertState]:
    """Firing once a breach has lasted ``for_duration``; resolved when it ends."""
    state, run_start, at = AlertState.OK, None, T0
    expected = []
    for gap, value in seq:
        at += timedelta(seconds=gap)
        if rule.comparison.holds(value, rule.threshold):
            run_start = at if run_start is None else run_start
            held = at - run_start >= rule.for_duration
            state = AlertState.FIRING if held or state is AlertState.FIRING else AlertState.PENDING
        else:
            run_start = None
            if state is AlertState.FIRING:
                state = AlertState.RESOLVED
            elif state is AlertState.PENDING:
                state = AlertState.OK
        expected.append(state)
    return expected


@given(rules, readings)
def test_states_follow_the_reference_model(rule: AlertRule, seq: list[tuple[int, float]]) -> None:
    assert [state for state, _ in run(rule, seq)] == reference(rule, seq)


@given(rules, readings)
def test_firing_and_resolved_alternate_and_are_each_entered_once(
    rule: AlertRule, seq: list[tuple[int, float]]
) -> None:
    entered = [
        state
        for state, moved in run(rule, seq)
        if moved and state in (AlertState.FIRING, AlertState.RESOLVED)
    ]
    assert entered == [AlertState.FIRING, AlertState.RESOLVED] * (len(entered) // 2) + (
        [AlertState.FIRING] if len(entered) % 2 else []
    )


@given(rules, readings, st.integers(1, 600))
def test_a_late_reading_never_moves_a_state(
    rule: AlertRule, seq: list[tuple[int, float]], lateness: int
) -> None:
    current: AlertStatus | None = None
    at = T0
    for gap, value in seq:
        at += timedelta(seconds=gap)
        current = step(rule, current, SERIES, value, at) or current
    if current is None:
        return
    for value in (0.0, 50.0, 95.0):
        assert (
            step(rule, current, SERIES, value, current.since - timedelta(seconds=lateness)) is None
        )


def test_for_duration_counts_from_the_first_breaching_reading() -> None:
    rule = AlertRule(
        id="r", owner_id="u", name="cpu", metric="cpu.percent",
        comparison=Comparison.GT, threshold=90, for_duration=timedelta(minutes=1),
    )  # fmt: skip
    seq = [(0, 95.0), (30, 96.0), (29, 97.0), (1, 98.0), (10, 50.0), (10, 95.0)]
    assert run(rule, seq) == [
        (AlertState.PENDING, True),
        (AlertState.PENDING, False),
        (AlertState.PENDING, False),
        (AlertState.FIRING, True),
        (AlertState.RESOLVED, True),
        (AlertState.PENDING, True),
    ]
