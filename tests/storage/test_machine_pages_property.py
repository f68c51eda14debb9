"""page_machines on the SQL store against MachineQuery.matches, by hypothesis:
random machines, filters and page sizes, with machines added and deleted between
pages; every machine that stays is seen exactly once, and only if it matches."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from lunasentri_core.model import Machine, MachineStatus, User
from lunasentri_core.storage.protocols import MachineQuery
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.testing.builders import BASE_TIME, make_machine, make_user

NAMES = st.text(alphabet="abAB-_%é", min_size=1, max_size=4)
LABELS = st.dictionaries(st.sampled_from(["env", "role"]), st.sampled_from(["a", "b", 'x"']))
STATUS = st.sampled_from(list(MachineStatus))
SEEN = st.none() | st.integers(0, 3).map(lambda m: BASE_TIME + timedelta(minutes=m))
MACHINE = st.tuples(NAMES, LABELS, STATUS, SEEN)
QUERY = st.fixed_dictionaries(
    {
        "status": st.none() | STATUS,
        "seen_since": st.none() | st.just(BASE_TIME + timedelta(minutes=2)),
        "labels": st.none() | LABELS,
        "name": st.none() | st.text(alphabet="abAB-_%é", min_size=1, max_size=2),
        "limit": st.integers(1, 4),
    }
)


@pytest.fixture
def storage(sqlite_engine: Engine) -> Iterator[SqlStorage]:
    backend = SqlStorage(sqlite_engine, name="sql")
    backend.migrate()
    yield backend
    backend.close()


def _add(
    storage: SqlStorage, owner: User, spec: tuple[object, ...], taken: set[str]
) -> Machine | None:
    name, labels, status, seen = spec
    assert isinstance(name, str)
    if name in taken:  # one name per owner
        return None
    taken.add(name)
    machine = make_machine(
        owner_id=owner.id, name=name, labels=labels, status=status, last_seen=seen
    )
    return storage.state.add_machine(machine)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    machines=st.lists(MACHINE, max_size=12),
    added=st.lists(MACHINE, max_size=4),
    deletions=st.lists(st.integers(0, 11), max_size=4),
    fields=QUERY,
)
def test_a_walk_matches_the_reference_while_machines_come_and_go(
    storage: SqlStorage,
    machines: list[tuple[object, ...]],
    added: list[tuple[object, ...]],
    deletions: list[int],
    fields: dict[str, object],
) -> None:
    owner = storage.state.add_user(make_user(), "hash")
    other = storage.state.add_user(make_user(), "hash")
    taken: set[str] = set()
    stored = [m for spec in machines if (m := _add(storage, owner, spec, taken))]
    others_taken: set[str] = set()
    for spec in machines[:3]:  # another owner's machines with the same names
        _add(storage, other, spec, others_taken)
    query = MachineQuery(owner_id=owner.id, **{k: v for k, v in fields.items() if v is not None})
    seen: list[Machine] = []
    deleted: set[str] = set()
    late: list[Machine] = []
    changes = iter([*added, *([None] * 20)])
    while True:
        page = storage.state.page_machines(query)
        assert len(page) <= query.limit
        assert all(m.owner_id == owner.id and query.matches(m) for m in page)
        seen.extend(page)
        if len(page) < query.limit:
            break
        query = attrs.evolve(query, after=(page[-1].name, page[-1].id))
        # Between pages: one machine added, one deleted.
        spec = next(changes)
        if spec is not None and (m := _add(storage, owner, spec, taken)):
            late.append(m)
        if deletions:
            index = deletions.pop() % len(stored)
            if stored[index].id not in deleted:
                storage.state.delete_machine(stored[index].id)
                deleted.add(stored[index].id)
    ids = [m.id for m in seen]
    assert len(ids) == len(set(ids)), "a machine came twice"
    stayed = {m.id for m in stored if m.id not in deleted and query.matches(m)}
    assert stayed <= set(ids), "a machine that stayed was missed"
    assert set(ids) <= {m.id for m in [*stored, *late]}
