"""The server's state in the shared SQL storage, beyond the contract.

Upgrading a 0001 database, error messages, races lost to another process (a
second store on the same database), and what the foreign keys do when rows are
deleted behind the store's back.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import attrs
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sql_support import OpenStorage
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SAWarning

from lunasentri_core.errors import ConflictError, NotFoundError
from lunasentri_core.model import (
    AgentClaim,
    AgentConfig,
    AuditEntry,
    ClaimStatus,
    ResetToken,
    Session,
    new_id,
)
from lunasentri_core.storage.sql import (
    VERSION_TABLE,
    SqlStorage,
    alembic_config,
    head_revision,
    metadata,
)
from lunasentri_core.storage.sql.partitions import is_partition_name
from lunasentri_core.storage.sql.schema import (
    agent_claims,
    agent_configs,
    api_keys,
    labels_to_json,
    machines,
    reset_tokens,
    sessions,
    users,
)
from lunasentri_core.testing import hash_secret, make_api_key, make_machine, make_user

T0 = datetime(2025, 3, 1, tzinfo=UTC)
SERVER_TABLES = {
    "sessions",
    "reset_tokens",
    "login_failures",
    "agent_claims",
    "audit_log",
    "agent_configs",
}
_T = TypeVar("_T")


def session_for(user_id: str, **overrides: Any) -> Session:
    fields: dict[str, Any] = {
        "id": new_id(),
        "user_id": user_id,
        "token_hash": hash_secret(new_id()),
        "created_at": T0,
        "expires_at": T0 + timedelta(days=1),
    }
    return Session(**(fields | overrides))


def reset_for(user_id: str, **overrides: Any) -> ResetToken:
    fields: dict[str, Any] = {
        "id": new_id(),
        "user_id": user_id,
        "token_hash": hash_secret(new_id()),
        "created_at": T0,
        "expires_at": T0 + timedelta(hours=1),
    }
    return ResetToken(**(fields | overrides))


def claim(**overrides: Any) -> AgentClaim:
    fields: dict[str, Any] = {
        "agent_id": new_id(),
        "claim_token_hash": hash_secret(new_id()),
        "hostname": "agent.example.test",
        "version": "0.1.0",
        "created_at": T0,
        "expires_at": T0 + timedelta(hours=1),
    }
    return AgentClaim(**(fields | overrides))


def audit(action: str = "user.login", **overrides: Any) -> AuditEntry:
    fields: dict[str, Any] = {"id": new_id(), "at": T0, "action": action, "actor_kind": "user"}
    return AuditEntry(**(fields | overrides))


def race(actions: list[Callable[[], _T]]) -> list[_T | Exception]:
    """Run the actions in threads released together; each gives a result or its error."""
    barrier = threading.Barrier(len(actions))

    def run(action: Callable[[], _T]) -> _T | Exception:
        barrier.wait(timeout=60)
        try:
            return action()
        except (ConflictError, NotFoundError) as error:
            return error

    with ThreadPoolExecutor(len(actions)) as pool:
        return list(pool.map(run, actions, timeout=120))


def tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


# --------------------------------------------------------------------------- migration


def _insert_0001(
    conn: sa.Connection, table: sa.Table, values: dict[str, Any], **extra: Any
) -> None:
    later = {"offline_after"}  # fields added after revision 0001
    row = {k: _plain(v) for k, v in values.items() if k not in later}
    conn.execute(sa.insert(table).values(**row, **extra))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return labels_to_json(value)
    return getattr(value, "value", value)


def test_a_0001_database_upgrades_and_keeps_its_data(empty_engine: Engine) -> None:
    storage = SqlStorage(empty_engine)
    with empty_engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    assert storage.schema_revision() == "0001"
    assert not SERVER_TABLES & tables(empty_engine)
    user = make_user()
    machine = make_machine(owner_id=user.id)
    key = make_api_key(machine.id)
    with empty_engine.begin() as conn:
        # Rows as a 0001 database holds them (today's code writes later columns too).
        _insert_0001(conn, users, attrs.asdict(user, recurse=False), password_hash="scrypt$old")
        _insert_0001(conn, machines, attrs.asdict(machine, recurse=False))
        _insert_0001(conn, api_keys, attrs.asdict(key, recurse=False))

    storage.migrate()

    assert storage.schema_revision() == head_revision()
    assert tables(empty_engine) >= SERVER_TABLES
    state = storage.state
    assert state.get_user(user.id) == user
    assert state.password_hash(user.id) == "scrypt$old"
    assert state.get_machine(machine.id, user.id) == machine
    assert state.find_api_key(key.key_hash) == key
    session = state.add_session(session_for(user.id))
    assert state.find_session(session.token_hash) == session
    assert state.set_agent_config(AgentConfig(machine.id)).version == 1
    with empty_engine.connect() as conn, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection", SAWarning)
        warnings.filterwarnings("ignore", "autogenerate skipping .* expression-based index")
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "version_table": VERSION_TABLE,
                # PostgreSQL's partitions of metric_chunks are no tables of the schema.
                "include_object": lambda obj, name, type_, reflected, compare_to: (
                    not (type_ == "table" and is_partition_name(name or ""))
                ),
            },
        )
        assert compare_metadata(context, metadata) == []
    storage.close()


def test_downgrading_to_0001_drops_only_the_server_state(empty_engine: Engine) -> None:
    storage = SqlStorage(empty_engine)
    storage.migrate()
    user = storage.state.add_user(make_user(), "h")
    storage.state.add_session(session_for(user.id))
    with empty_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    assert not SERVER_TABLES & tables(empty_engine)
    assert storage.state.get_user(user.id) == user
    storage.migrate()
    assert storage.state.list_sessions(user.id) == []
    storage.close()


# --------------------------------------------------------------------------- messages


def test_missing_records_are_named(storage: SqlStorage) -> None:
    state = storage.state
    with pytest.raises(NotFoundError, match="user 'ghost' of the session not found"):
        state.add_session(session_for("ghost"))
    with pytest.raises(NotFoundError, match="user 'ghost' of the reset token not found"):
        state.add_reset_token(reset_for("ghost"))
    with pytest.raises(NotFoundError, match="session 'ghost' not found"):
        state.revoke_session("ghost", T0)
    with pytest.raises(NotFoundError, match="user 'ghost' not found"):
        state.revoke_user_sessions("ghost", T0)
    with pytest.raises(NotFoundError, match="reset token 'ghost' not found"):
        state.use_reset_token("ghost", T0)
    with pytest.raises(NotFoundError, match="API key 'ghost' not found"):
        state.set_api_key_expiry("ghost", None)
    with pytest.raises(NotFoundError, match="agent 'ghost' has no registration"):
        state.get_claim("ghost")
    with pytest.raises(NotFoundError, match="agent 'ghost' has no registration"):
        state.take_sealed_key("ghost")
    with pytest.raises(NotFoundError, match="machine 'ghost' of agent 'a1' not found"):
        state.add_claim(claim(agent_id="a1", machine_id="ghost"))
    with pytest.raises(NotFoundError, match="machine 'ghost' not found"):
        state.set_agent_config(AgentConfig("ghost"))
    assert state.list_claims() == []


def test_conflicts_say_what_is_taken(storage: SqlStorage) -> None:
    state = storage.state
    user = state.add_user(make_user(), "h")
    session = state.add_session(session_for(user.id))
    with pytest.raises(ConflictError, match="session with this token hash already exists"):
        state.add_session(session_for(user.id, token_hash=session.token_hash))
    with pytest.raises(ConflictError, match=f"session with id '{session.id}' already exists"):
        state.add_session(attrs.evolve(session, token_hash="another"))
    token = state.add_reset_token(reset_for(user.id))
    with pytest.raises(ConflictError, match=f"reset token with id '{token.id}' already exists"):
        state.add_reset_token(attrs.evolve(token, token_hash="another"))
    pending = state.add_claim(claim(agent_id="a1"))
    with pytest.raises(ConflictError, match=r"agent 'a1' is already registered \(pending\)"):
        state.add_claim(claim(agent_id="a1"))
    state.update_claim(attrs.evolve(pending, status=ClaimStatus.CLAIMED))
    with pytest.raises(ConflictError, match="agent 'a1' is claimed, not pending"):
        state.update_claim(pending, expected_status=ClaimStatus.PENDING)
    entry = audit()
    state.add_audit(entry)
    with pytest.raises(ConflictError, match=f"audit entry with id '{entry.id}' already exists"):
        state.add_audit(entry)


@pytest.mark.parametrize(
    "detail",
    [{"when": T0}, {"ratio": float("nan")}, {"bytes": b"\x00"}],
    ids=["datetime", "nan", "bytes"],
)
def test_audit_detail_must_be_json(storage: SqlStorage, detail: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"detail of audit entry 'machine\.create' is not a JSON"):
        storage.state.add_audit(audit("machine.create", detail=detail))
    assert storage.state.list_audit() == []


def test_a_negative_audit_limit_lists_nothing(storage: SqlStorage) -> None:
    storage.state.add_audit(audit())
    assert storage.state.list_audit(limit=-1) == []


# --------------------------------------------------------------------------- storage form


def test_times_are_stored_as_integer_microseconds(storage: SqlStorage) -> None:
    state = storage.state
    user = state.add_user(make_user(), "h")
    machine = state.add_machine(make_machine())
    at = T0 + timedelta(microseconds=7)
    state.add_session(session_for(user.id, expires_at=at))
    entry = audit(at=at.astimezone(timezone(timedelta(hours=2))))
    state.add_audit(entry)
    state.set_agent_config(AgentConfig(machine.id, interval=timedelta(seconds=1, microseconds=3)))
    micros = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    with storage.db.read() as conn:
        raw = conn.exec_driver_sql
        assert raw("SELECT expires_at FROM sessions").scalar_one() == micros
        assert raw("SELECT at FROM audit_log").scalar_one() == micros
        assert raw("SELECT interval_us FROM agent_configs").scalar_one() == 1_000_003
    (listed,) = state.list_audit()
    assert listed == entry
    assert listed.at.tzinfo is UTC


def test_audit_entries_of_deleted_users_keep_the_actor_id(storage: SqlStorage) -> None:
    state = storage.state
    user = state.add_user(make_user(), "h")
    entry = audit("user.delete", actor_id=user.id, target_type="user", target_id=user.id)
    state.add_audit(entry)
    state.delete_user(user.id)
    assert state.list_audit(actor_id=user.id) == [entry]


def test_deleting_a_user_reaches_their_machines_configs_and_claims(storage: SqlStorage) -> None:
    state = storage.state
    user = state.add_user(make_user(), "h")
    machine = state.add_machine(make_machine(owner_id=user.id))
    state.set_agent_config(AgentConfig(machine.id))
    waiting = state.add_claim(
        claim(status=ClaimStatus.CLAIMED, machine_id=machine.id, sealed_key=b"k")
    )
    state.delete_user(user.id)
    assert state.get_agent_config(machine.id) is None
    assert state.get_claim(waiting.agent_id) == attrs.evolve(
        waiting, status=ClaimStatus.EXPIRED, machine_id=None, sealed_key=None
    )


# --------------------------------------------------------------------------- foreign keys


def test_rows_deleted_behind_the_stores_back_leave_nothing_dangling(storage: SqlStorage) -> None:
    # What an older LunaSentri, or an operator with a SQL shell, may do.
    state = storage.state
    user = state.add_user(make_user(), "h")
    machine = state.add_machine(make_machine())
    state.add_session(session_for(user.id))
    state.add_reset_token(reset_for(user.id))
    state.set_agent_config(AgentConfig(machine.id))
    delivered = state.add_claim(claim(status=ClaimStatus.DELIVERED, machine_id=machine.id))
    with storage.db.write() as conn:
        conn.execute(sa.delete(users).where(users.c.id == user.id))
        conn.execute(sa.delete(machines).where(machines.c.id == machine.id))
    with storage.db.read() as conn:
        for table in (sessions, reset_tokens, agent_configs):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0
        assert conn.execute(sa.select(agent_claims.c.machine_id)).scalar_one() is None
    assert state.get_claim(delivered.agent_id) == attrs.evolve(delivered, machine_id=None)


def test_a_lost_race_on_a_session_hash_is_still_a_conflict(
    storage: SqlStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process adds the same hash between the check and the insert.
    state = storage.state
    user = state.add_user(make_user(), "h")
    session = state.add_session(session_for(user.id))
    exists = state._exists
    monkeypatch.setattr(
        state, "_exists", lambda conn, table, cond: table is users and exists(conn, table, cond)
    )
    with pytest.raises(ConflictError, match="token hash already exists"):
        state.add_session(session_for(user.id, token_hash=session.token_hash))
    assert state.list_sessions(user.id) == [session]


# --------------------------------------------------------------------------- two processes


def test_replacing_a_finished_registration_has_one_winner_across_processes(
    open_storage: OpenStorage,
) -> None:
    first, second = open_storage(), open_storage()
    old = first.state.add_claim(claim(status=ClaimStatus.EXPIRED))
    contenders = [claim(agent_id=old.agent_id, hostname=f"host-{n}") for n in range(6)]
    stores = [first, second] * 3
    results = race(
        [
            (lambda store=store, new=new: store.state.add_claim(new))
            for store, new in zip(stores, contenders, strict=True)
        ]
    )
    winners = [r for r in results if isinstance(r, AgentClaim)]
    assert len(winners) == 1, results
    assert all(isinstance(r, ConflictError) for r in results if r is not winners[0])
    assert second.state.get_claim(old.agent_id) == winners[0]


def test_one_process_takes_the_sealed_key(open_storage: OpenStorage) -> None:
    first, second = open_storage(), open_storage()
    machine = first.state.add_machine(make_machine())
    stored = first.state.add_claim(
        claim(status=ClaimStatus.CLAIMED, machine_id=machine.id, sealed_key=b"sealed")
    )
    stores = [first, second] * 3
    results = race([(lambda s=s: s.state.take_sealed_key(stored.agent_id)) for s in stores])
    assert sorted(results, key=repr) == [None] * 5 + [b"sealed"]
    assert second.state.get_claim(stored.agent_id).status is ClaimStatus.DELIVERED


def test_agent_config_versions_are_distinct_across_processes(open_storage: OpenStorage) -> None:
    first, second = open_storage(), open_storage()
    machine = first.state.add_machine(make_machine())
    stores = [first, second] * 3
    results = race(
        [(lambda s=s: s.state.set_agent_config(AgentConfig(machine.id)).version) for s in stores]
    )
    assert sorted(results, key=repr) == [1, 2, 3, 4, 5, 6]
