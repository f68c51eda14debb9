"""Which rules watch a machine's metrics, and when none of them can move.

Evaluating every rule against every reading would cost more than storing the
reading. A plan groups the rules that apply to one machine by metric and folds
their conditions into bounds: a value inside all of them breaches no rule, so
a series that no rule holds pending or firing needs no further look.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from operator import itemgetter, lt
from typing import Any, NamedTuple

import attrs

from lunasentri_core.model import AlertRule, Comparison, Labels, Machine
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
    """A reading a rule watches: its position in the sample, its series key and the
    plan of its metric."""

    position: int
    key: ReadingKey
    plan: MetricPlan


class Derivation(NamedTuple):
    """A percentage a rule watches, derived from two readings of the sample."""

    metric: str
    labels: Labels
    used: int
    """The position of the used reading in the sample, ..."""
    total: int
    """... and of the total one."""
    plan: MetricPlan


def _values_at(positions: Sequence[int]) -> Callable[[Sequence[float]], tuple[float, ...]]:
    """A function giving the values at ``positions`` (in C, as ``itemgetter`` does)."""
    if not positions:
        return lambda values: ()
    if len(positions) == 1:
        (at,) = positions
        return lambda values: (values[at],)
    return itemgetter(*positions)


@attrs.frozen
class Layout:
    """What evaluation looks at in samples with one sequence of series keys."""

    picks: tuple[Pick, ...]
    """The readings a rule watches, in sample order."""
    derivations: tuple[Derivation, ...]
    """The percentages a rule watches that the sample lets derive (and does not
    report itself: a collector's own percentage wins)."""
    watched: Callable[[Sequence[float]], tuple[float, ...]] = attrs.field(init=False)
    """The values of the picked readings, ..."""
    lows: tuple[float, ...] = attrs.field(init=False)
    highs: tuple[float, ...] = attrs.field(init=False)
    """... and the bounds inside which each breaches no rule (:attr:`MetricPlan.low`)."""

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "watched", _values_at([p.position for p in self.picks]))
        object.__setattr__(self, "lows", tuple(p.plan.low for p in self.picks))
        object.__setattr__(self, "highs", tuple(p.plan.high for p in self.picks))

    @classmethod
    def of(cls, plan: MachinePlan, keys: Sequence[ReadingKey]) -> Layout:
        position = {key: i for i, key in enumerate(keys)}
        picks = tuple(
            Pick(i, key, plan.metrics[key[0]])
            for i, key in enumerate(keys)
            if key[0] in plan.metrics
        )
        derivations = []
        for i, (metric, labels) in enumerate(keys):
            for name, total_metric in plan.used_of.get(metric, ()):
                total = position.get((total_metric, labels))
                if total is not None and (name, labels) not in position:
                    derivations.append(Derivation(name, labels, i, total, plan.metrics[name]))
        return cls(picks, tuple(derivations))

    def quiet(self, values: Sequence[float]) -> bool:
        """True when no picked value of the sample can breach a rule (all in C)."""
        watched = self.watched(values)
        return all(map(lt, self.lows, watched)) and all(map(lt, watched, self.highs))


@attrs.frozen
class MachinePlan:
    """A machine's :class:`MetricPlan` per metric, and the derived metrics among them."""

    metrics: Mapping[str, MetricPlan]
    derived: tuple[tuple[str, str, str], ...]
    """(derived metric, used metric, total metric) for each derived metric watched."""
    used_of: Mapping[str, tuple[tuple[str, str], ...]] = attrs.field(init=False)
    """(derived metric, total metric) for each used metric a watched percentage divides."""
    _last: list[Any] = attrs.field(init=False, eq=False, repr=False, factory=lambda: [None, ()])
    """The series keys :meth:`layout` saw last, and what it answered."""

    def __attrs_post_init__(self) -> None:
        used_of: dict[str, list[tuple[str, str]]] = {}
        for name, used, total in self.derived:
            used_of.setdefault(used, []).append((name, total))
        object.__setattr__(self, "used_of", {k: tuple(v) for k, v in used_of.items()})

    def layout(self, keys: Sequence[ReadingKey]) -> Layout:
        """What evaluation looks at in a sample with these series keys.

        A machine's samples usually repeat their series (ingest's decoded
        samples share the very same keys), so the answer for the last keys seen
        is kept.
        """
        last_keys, last = self._last
        if keys is last_keys or keys == last_keys:
            return last  # type: ignore[no-any-return]
        found = Layout.of(self, keys)
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
        return cls({metric: MetricPlan.of(group) for metric, group in by_metric.items()}, derived)
