"""Which rules watch a machine's metrics, and when none of them can move.

Evaluating every rule against every reading would cost more than storing the
reading. A plan groups the rules that apply to one machine by metric and folds
their conditions into bounds: a value inside all of them breaches no rule, so
a series that no rule holds pending or firing needs no further look.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import attrs

from lunasentri_core.model import AlertRule, Comparison, Machine
from lunasentri_core.samples import ReadingKey
from lunasentri_core.services.queries import DERIVED


def applies(rule: AlertRule, machine: Machine, admins: Collection[str] = ()) -> bool:
    """Whether ``rule`` watches ``machine``: one of its owner's machines, or an unowned
    one when the owner is an administrator (one of ``admins``)."""
    if not rule.enabled:
        return False
    owner = machine.owner_id
    if owner != rule.owner_id and not (owner is None and rule.owner_id in admins):
        return False
    return rule.scope.matches(machine)


@attrs.frozen
class MetricPlan:
    """The rules on one metric of one machine, and the values that breach none of them."""

    rules: tuple[AlertRule, ...]
    gt: float = math.inf
    """Quiet needs ``value <= gt`` (the lowest ``>`` threshold)."""
    ge: float = math.inf
    lt: float = -math.inf
    le: float = -math.inf
    eq: frozenset[float] = frozenset()
    ne: frozenset[float] = frozenset()
    low: float = attrs.field(init=False)
    high: float = attrs.field(init=False)
    """``low < value < high`` is a quick, sufficient test of :meth:`quiet` (empty when
    an ``==`` or ``!=`` rule makes a range meaningless)."""

    def __attrs_post_init__(self) -> None:
        exact = bool(self.eq or self.ne)
        object.__setattr__(self, "low", math.inf if exact else max(self.lt, self.le))
        object.__setattr__(self, "high", -math.inf if exact else min(self.gt, self.ge))

    def quiet(self, value: float) -> bool:
        """True when ``value`` breaches none of the rules."""
        return (
            self.lt <= value <= self.gt
            and self.le < value < self.ge
            and value not in self.eq
            and (not self.ne or self.ne == {value})
        )

    @classmethod
    def of(cls, rules: Iterable[AlertRule]) -> MetricPlan:
        rules = tuple(rules)

        def thresholds(comparison: Comparison) -> list[float]:
            return [r.threshold for r in rules if r.comparison is comparison]

        return cls(
            rules,
            gt=min(thresholds(Comparison.GT), default=math.inf),
            ge=min(thresholds(Comparison.GE), default=math.inf),
            lt=max(thresholds(Comparison.LT), default=-math.inf),
            le=max(thresholds(Comparison.LE), default=-math.inf),
            eq=frozenset(thresholds(Comparison.EQ)),
            ne=frozenset(thresholds(Comparison.NE)),
        )


class Pick(NamedTuple):
    """A reading evaluation looks at: its position in the sample, its series key, the
    plan of its metric (``None`` when only a derived metric needs it), and whether a
    derived metric needs it."""

    position: int
    key: ReadingKey
    plan: MetricPlan | None
    part: bool


@attrs.frozen
class MachinePlan:
    """A machine's :class:`MetricPlan` per metric, and the derived metrics among them."""

    metrics: Mapping[str, MetricPlan]
    derived: tuple[tuple[str, str, str], ...]
    """(derived metric, used metric, total metric) for each derived metric watched."""
    parts: frozenset[str]
    """The derived metrics and their used and total metrics: what a sample must show to
    derive a percentage (or, when it reports the percentage itself, not to)."""
    used_of: Mapping[str, tuple[tuple[str, str], ...]] = attrs.field(init=False)
    """(derived metric, total metric) for each used metric a watched percentage divides."""
    _last: list[Any] = attrs.field(init=False, eq=False, repr=False, factory=lambda: [None, ()])
    """The series keys :meth:`picks` saw last, and what it answered."""

    def __attrs_post_init__(self) -> None:
        used_of: dict[str, list[tuple[str, str]]] = {}
        for name, used, total in self.derived:
            used_of.setdefault(used, []).append((name, total))
        object.__setattr__(self, "used_of", {k: tuple(v) for k, v in used_of.items()})

    def picks(self, keys: Sequence[ReadingKey]) -> tuple[Pick, ...]:
        """The readings of a sample with these series keys that evaluation looks at.

        A machine's samples usually repeat their series (ingest's decoded
        samples share the very same keys), so the answer for the last keys seen
        is kept: the hot loop then visits only the watched readings.
        """
        last_keys, last = self._last
        if keys is last_keys or keys == last_keys:
            return last  # type: ignore[no-any-return]
        watched, parts = self.metrics, self.parts
        found = tuple(
            Pick(i, key, watched.get(key[0]), key[0] in parts)
            for i, key in enumerate(keys)
            if key[0] in watched or key[0] in parts
        )
        self._last[:] = [keys, found]
        return found

    @classmethod
    def of(
        cls, rules: Iterable[AlertRule], machine: Machine, admins: Collection[str] = ()
    ) -> MachinePlan:
        by_metric: dict[str, list[AlertRule]] = {}
        for rule in rules:
            if applies(rule, machine, admins):
                by_metric.setdefault(rule.metric, []).append(rule)
        derived = tuple((name, *DERIVED[name]) for name in sorted(by_metric.keys() & DERIVED))
        parts = {metric for triple in derived for metric in triple}
        return cls(
            {metric: MetricPlan.of(group) for metric, group in by_metric.items()},
            derived,
            frozenset(parts),
        )
