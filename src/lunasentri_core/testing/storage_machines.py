"""The machine-list part of the :class:`StateStore` contract: ``page_machines``.

It pins down: pages come in (name, id) order and hold at most ``limit``
machines; walking them with ``after`` set to the last key seen gives every
machine exactly once even when machines are added and deleted between pages
(one added behind the position is not seen, one added ahead is, one deleted
ahead is not); a page holds only the owner's machines, whatever key ``after``
names; the status filter counts a recorded ``unknown`` machine that has reported
by ``seen_since``; labels match as exact name and value pairs, also with
characters that are special in JSON, LIKE or the selector; the name filter is a
substring match folding only ASCII letters' case.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import attrs

from lunasentri_core.model import Machine, MachineStatus, User
from lunasentri_core.storage.protocols import MachineQuery, StateStore
from lunasentri_core.testing.builders import BASE_TIME, make_machine, make_user
from lunasentri_core.testing.contract import Contract


def _user(state: StateStore) -> User:
    return state.add_user(make_user(), "hash-of-a-password")


def _machines(state: StateStore, owner: User, names: Iterable[str], **fields: Any) -> list[Machine]:
    return [state.add_machine(make_machine(owner_id=owner.id, name=n, **fields)) for n in names]


def _names(machines: Iterable[Machine]) -> list[str]:
    return [m.name for m in machines]


def _walk(state: StateStore, query: MachineQuery) -> list[Machine]:
    """Every page of ``query`` after the other, as a client follows cursors."""
    seen: list[Machine] = []
    while True:
        page = state.page_machines(query)
        assert len(page) <= query.limit
        # Also ends the walk of a store that repeats machines (by id: the order of
        # names is the backend's collation, not necessarily Python's).
        again = {m.id for m in seen} & {m.id for m in page}
        assert not again, f"machines came again on a later page: {sorted(again)}"
        seen.extend(page)
        if len(page) < query.limit:
            return seen
        query = attrs.evolve(query, after=(page[-1].name, page[-1].id))


class MachineListContract(Contract):
    """``page_machines`` tests, run as part of :class:`StateStoreContract`."""

    __test__ = False

    def test_machine_pages_come_in_name_order(self, state: StateStore) -> None:
        owner = _user(state)
        # Added out of order; two machines may not share a name, so ids only
        # break ties between owners (see the scoping test).
        names = [f"m-{n:03d}" for n in (5, 1, 9, 3, 7, 0, 2, 8, 6, 4)]
        _machines(state, owner, names)
        first = state.page_machines(MachineQuery(owner_id=owner.id, limit=4))
        assert _names(first) == ["m-000", "m-001", "m-002", "m-003"]
        after = (first[-1].name, first[-1].id)
        rest = state.page_machines(MachineQuery(owner_id=owner.id, after=after, limit=100))
        assert _names(rest) == [f"m-{n:03d}" for n in range(4, 10)]
        assert state.page_machines(MachineQuery(owner_id=owner.id, after=("m-009", ""))) != []
        assert state.page_machines(MachineQuery(owner_id=owner.id, after=("m-010", ""))) == []
        assert _walk(state, MachineQuery(owner_id=owner.id, limit=1)) == [*first, *rest]

    def test_machine_pages_see_each_machine_once_while_machines_come_and_go(
        self, state: StateStore
    ) -> None:
        owner = _user(state)
        kept = _machines(state, owner, [f"m-{n:03d}" for n in range(0, 40, 2)])
        query = MachineQuery(owner_id=owner.id, limit=6)
        seen = state.page_machines(query)
        deleted_ahead = next(m for m in kept if m.name == "m-030")
        state.delete_machine(deleted_ahead.id)
        deleted_behind = seen[1]
        state.delete_machine(deleted_behind.id)
        (behind,) = _machines(state, owner, ["m-001"])
        (ahead,) = _machines(state, owner, ["m-031"])
        rest = _walk(
            state, MachineQuery(owner_id=owner.id, after=(seen[-1].name, seen[-1].id), limit=6)
        )
        walked = [*seen, *rest]
        ids = [m.id for m in walked]
        assert len(ids) == len(set(ids)), "a machine came twice"
        assert behind.id not in ids
        assert ahead.id in ids
        assert deleted_ahead.id not in ids
        expected = {m.id for m in kept} - {deleted_ahead.id} | {ahead.id}
        assert set(ids) == expected
        assert _names(walked) == sorted(_names(walked))

    def test_a_machine_page_holds_only_the_owners_machines(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        hers = _machines(state, alice, ["shared-1", "shared-3", "shared-5"])
        his = _machines(state, bob, ["shared-0", "shared-2", "shared-4", "shared-6"])
        assert _walk(state, MachineQuery(owner_id=alice.id, limit=1)) == hers
        # A key naming another owner's machine only sets the position.
        after = (his[1].name, his[1].id)
        assert state.page_machines(MachineQuery(owner_id=alice.id, after=after)) == hers[1:]
        everyone = {m.id for m in _walk(state, MachineQuery(limit=2))}
        assert {m.id for m in [*hers, *his]} <= everyone

    def test_machine_pages_filter_by_ids_within_the_owners_machines(
        self, state: StateStore
    ) -> None:
        alice, bob = _user(state), _user(state)
        hers = _machines(state, alice, ["id-1", "id-2", "id-3", "id-4"])
        his = _machines(state, bob, ["id-0"])
        wanted = (hers[3].id, hers[0].id, his[0].id, "no-such-machine", hers[0].id)
        found = state.page_machines(MachineQuery(owner_id=alice.id, ids=wanted))
        assert found == [hers[0], hers[3]]
        everyone = state.page_machines(MachineQuery(ids=wanted))
        assert _names(everyone) == ["id-0", "id-1", "id-4"]
        after = (hers[0].name, hers[0].id)
        assert state.page_machines(MachineQuery(ids=wanted, after=after, limit=1)) == [hers[3]]

    def test_machine_pages_filter_by_status(self, state: StateStore) -> None:
        owner = _user(state)
        since = BASE_TIME + timedelta(minutes=10)
        (online,) = _machines(state, owner, ["a-online"], status=MachineStatus.ONLINE)
        (offline,) = _machines(state, owner, ["b-offline"], status=MachineStatus.OFFLINE)
        (never,) = _machines(state, owner, ["c-never-seen"])
        (recent,) = _machines(state, owner, ["d-recent"], last_seen=since)
        (silent,) = _machines(state, owner, ["e-silent"], last_seen=since - timedelta(seconds=1))

        def page(status: MachineStatus, seen_since: Any = None) -> list[str]:
            query = MachineQuery(owner_id=owner.id, status=status, seen_since=seen_since)
            return _names(state.page_machines(query))

        assert page(MachineStatus.ONLINE) == [online.name]
        assert page(MachineStatus.OFFLINE) == [offline.name]
        assert page(MachineStatus.UNKNOWN) == [never.name, recent.name, silent.name]
        assert page(MachineStatus.ONLINE, since) == [online.name, recent.name]
        assert page(MachineStatus.OFFLINE, since) == [offline.name, silent.name]
        assert page(MachineStatus.UNKNOWN, since) == [never.name]

    def test_machine_pages_filter_by_labels(self, state: StateStore) -> None:
        owner = _user(state)
        tricky = 'a"b,c:d%_\\]["'
        specs: list[tuple[str, dict[str, str]]] = [
            ("l-1", {"env": "prod", "role": "db"}),
            ("l-2", {"env": "prod", "role": "web"}),
            ("l-3", {"env": "Prod"}),
            ("l-4", {"env": "staging", "note": '["env","prod"]'}),
            ("l-5", {"env": tricky}),
            ("l-6", {"env_x": "prod", "xenv": "prod"}),
            ("l-7", {"env": "produce"}),
            ("l-8", {}),
        ]
        for name, labels in specs:
            state.add_machine(make_machine(owner_id=owner.id, name=name, labels=labels))

        def page(**labels: str) -> list[str]:
            query = MachineQuery(owner_id=owner.id, labels=labels)
            return _names(state.page_machines(query))

        assert page(env="prod") == ["l-1", "l-2"]
        assert page(env="prod", role="web") == ["l-2"]
        assert page(role="db", env="prod") == ["l-1"]
        assert page(env="Prod") == ["l-3"]
        assert page(env=tricky) == ["l-5"]
        assert page(env="prod", role="cache") == []
        assert page(note='["env","prod"]') == ["l-4"]
        assert page(env="") == []
        assert len(page()) == len(specs)

    def test_machine_pages_filter_by_name(self, state: StateStore) -> None:
        owner = _user(state)
        names = ["Web-01", "web-02", "db-web", "DB-01", "cache_%", "Über-1", "über-2"]
        _machines(state, owner, names)

        def page(text: str) -> set[str]:
            query = MachineQuery(owner_id=owner.id, name=text)
            return set(_names(state.page_machines(query)))

        assert page("web") == {"Web-01", "web-02", "db-web"}
        assert page("WEB-0") == {"Web-01", "web-02"}
        assert page("db-") == {"db-web", "DB-01"}
        assert page("_%") == {"cache_%"}
        assert page("%") == {"cache_%"}
        assert page("b_0") == set()
        # Only ASCII letters fold: the same on every backend, whatever its locale.
        assert page("über") == {"über-2"}
        assert page("Über") == {"Über-1"}
        assert page("nothing") == set()

    def test_machine_page_filters_combine_with_the_position(self, state: StateStore) -> None:
        owner = _user(state)
        for n in range(12):
            state.add_machine(
                make_machine(
                    owner_id=owner.id,
                    name=f"{'web' if n % 2 else 'db'}-{n:02d}",
                    labels={"env": "prod" if n % 3 else "dev"},
                    status=MachineStatus.ONLINE if n % 4 else MachineStatus.OFFLINE,
                )
            )
        query = MachineQuery(
            owner_id=owner.id, name="WEB", labels={"env": "prod"}, status=MachineStatus.ONLINE
        )
        everyone = _walk(state, MachineQuery(owner_id=owner.id))
        expected = [m for m in everyone if query.matches(m)]
        assert _names(expected) == ["web-01", "web-05", "web-07", "web-11"]
        for limit in (1, 2, 3, 5):
            walked = _walk(state, attrs.evolve(query, limit=limit))
            assert walked == expected
