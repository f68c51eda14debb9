"""A machine's rule plan: which readings of a sample evaluation looks at."""

from __future__ import annotations

import attrs

from lunasentri_core.model import AlertRule, Comparison, Machine, Severity, new_id
from lunasentri_core.services.rule_plan import Derivation, MachinePlan, Pick

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


def test_the_layout_picks_watched_readings_and_derives_watched_percentages() -> None:
    plan = MachinePlan.of([rule("cpu.percent"), rule("mem.percent")], MACHINE)
    layout = plan.layout(KEYS)
    cpu_plan = plan.metrics["cpu.percent"]
    assert layout.picks == (Pick(0, KEYS[0], cpu_plan), Pick(3, KEYS[3], cpu_plan))
    # mem.percent from mem.used (position 2) over mem.total (position 4).
    assert layout.derivations == (Derivation("mem.percent", (), 2, 4, plan.metrics["mem.percent"]),)


def test_a_percentage_the_sample_reports_itself_is_not_derived() -> None:
    plan = MachinePlan.of([rule("mem.percent")], MACHINE)
    layout = plan.layout((*KEYS, ("mem.percent", ())))
    assert [p.position for p in layout.picks] == [6]
    assert layout.derivations == ()
    no_total = plan.layout(KEYS[:4])
    assert no_total.derivations == ()


def test_the_layout_of_the_last_keys_is_kept_and_other_keys_get_their_own() -> None:
    plan = MachinePlan.of([rule("load.1")], MACHINE)
    first = plan.layout(KEYS)
    assert plan.layout(KEYS) is first
    assert plan.layout(KEYS[:-1] + KEYS[-1:]) is first, "equal keys, another tuple"
    other = plan.layout(KEYS[::-1])
    assert [p.position for p in other.picks] == [0]
    assert [p.position for p in first.picks] == [5]
    assert plan.layout(()).picks == ()


def test_a_sample_is_quiet_when_every_watched_value_is_inside_its_bounds() -> None:
    # cpu.percent > 90 or < 5 (two rules); load.1 > 4.
    low_cpu = attrs.evolve(rule("cpu.percent", 5.0), comparison=Comparison.LT)
    plan = MachinePlan.of([rule("cpu.percent"), low_cpu, rule("load.1", 4.0)], MACHINE)
    layout = plan.layout(KEYS)
    #         cpu0  rx   used  cpu  total load
    healthy = [50.0, 1e9, 10.0, 60.0, 20.0, 1.0]
    assert layout.quiet(healthy)
    for position, value in [(0, 95.0), (3, 4.0), (5, 4.5), (0, -1.0)]:
        sample = list(healthy)
        sample[position] = value
        assert not layout.quiet(sample), (position, value)
    single = MachinePlan.of([rule("load.1")], MACHINE).layout(KEYS)
    assert single.watched(healthy) == (1.0,)
    assert MachinePlan.of([], MACHINE).layout(KEYS).quiet(healthy), "nothing watched"
