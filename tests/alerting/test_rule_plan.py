"""A machine's rule plan: which readings of a sample evaluation looks at."""

from __future__ import annotations

from lunasentri_core.model import AlertRule, Comparison, Machine, Severity, new_id
from lunasentri_core.services.rule_plan import MachinePlan

OWNER = new_id()
MACHINE = Machine(new_id(), "web-1", owner_id=OWNER)


def rule(metric: str, threshold: float = 90.0) -> AlertRule:
    return AlertRule(
        id=new_id(),
        owner_id=OWNER,
        name=f"{metric} high",
        metric=metric,
        comparison=Comparison.GT,
        threshold=threshold,
        severity=Severity.WARNING,
    )


KEYS = (
    ("cpu.percent", (("cpu", "0"),)),
    ("net.rx_bytes", ()),
    ("mem.used", ()),
    ("cpu.percent", ()),
    ("mem.total", ()),
    ("load.1", ()),
)


def test_picks_are_the_watched_readings_and_the_parts_of_derived_ones() -> None:
    plan = MachinePlan.of([rule("cpu.percent"), rule("mem.percent")], MACHINE)
    picks = plan.picks(KEYS)
    assert [(p.position, p.key) for p in picks] == [
        (0, KEYS[0]),
        (2, KEYS[2]),
        (3, KEYS[3]),
        (4, KEYS[4]),
    ]
    cpu_plan = plan.metrics["cpu.percent"]
    assert [(p.plan, p.part) for p in picks] == [
        (cpu_plan, False),
        (None, True),  # mem.used: only mem.percent needs it
        (cpu_plan, False),
        (None, True),
    ]


def test_picks_of_the_last_keys_are_kept_and_other_keys_get_their_own() -> None:
    plan = MachinePlan.of([rule("load.1")], MACHINE)
    first = plan.picks(KEYS)
    assert plan.picks(KEYS) is first
    assert plan.picks(KEYS[:-1] + KEYS[-1:]) is first, "equal keys, another tuple"
    other = plan.picks(KEYS[::-1])
    assert [p.position for p in other] == [0]
    assert [p.position for p in first] == [5]
    assert plan.picks(()) == ()
