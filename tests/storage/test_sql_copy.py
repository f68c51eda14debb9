"""``lunasentri db copy``: a real SQLite deployment moved to the real PostgreSQL (and SQLite).

The source is filled through the hub and its services (users, machines with
keys, hours of samples compacted by ``maintain()``, rules that fired, channels
with deliveries, silences, audit, agentless records); the target is then
opened as a hub of its own on the same data directory and must answer exactly
as the source did.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import anyio
import attrs
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from lunasentri_core import HostIdentity, Sentri, Settings
from lunasentri_core.components import Credentials, Principal
from lunasentri_core.errors import StorageError
from lunasentri_core.model import (
    AgentClaim,
    AgentConfig,
    Channel,
    Comparison,
    DiscoveryRun,
    ResetToken,
    Role,
    Session,
    Silence,
    User,
    new_id,
)
from lunasentri_core.samples import Reading, Sample
from lunasentri_core.security import (
    CLAIM_PREFIX,
    RESET_PREFIX,
    SESSION_PREFIX,
    hash_password,
    issue_token,
    verify_password,
)
from lunasentri_core.services.credentials import CredentialProfiles, ProfileFields
from lunasentri_core.services.discovery import Discovery
from lunasentri_core.services.machines import Machines
from lunasentri_core.services.monitors import Devices, Monitors
from lunasentri_core.services.rules import Rules
from lunasentri_core.storage.sql import SqlStorage, latest, metadata
from lunasentri_core.storage.sql.copy import (
    Progress,
    check_target_empty,
    copy_database,
    open_engine,
    redact,
)
from lunasentri_core.storage.sql.partitions import DEFAULT_PARTITION, list_partitions, window
from lunasentri_core.storage.sql.schema import latest_values, metric_chunks, series
from lunasentri_core.testing import make_plugin

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
SECRET_PASSWORD = "correct horse battery staple"
ALICE_PASSWORD = "alice's long passphrase"
HOURS = 4


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Stub:
    """A remote collector that is never polled here (monitors need one registered)."""

    name: ClassVar[str] = "stub"
    settings_class: ClassVar[None] = None

    def collect(self, target: Any) -> list[Reading]:
        return [Reading("proc.count", 1)]

    def identify(self, target: Any) -> HostIdentity:
        return HostIdentity(hostname="stub")


def stub_plugins() -> dict[str, object]:
    return {"stub": make_plugin("stub", lunasentri_register_collectors=lambda: [Stub])}


@attrs.frozen
class Deployment:
    """What the test needs to know about the source it filled."""

    data_dir: Path
    machine_id: str
    api_key: str
    session: str
    profile_id: str
    clock: Clock


def settings(data_dir: Path) -> Settings:
    return Settings.load(environ={}, data_dir=data_dir)


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'lunasentri.db'}"


async def populate(data_dir: Path) -> Deployment:
    """A SQLite deployment with a row in nearly every table."""
    clock = Clock()
    async with Sentri(settings(data_dir), plugins=stub_plugins(), clock=clock) as hub:
        state = hub.storage.state
        alice = await hub.run_sync(
            state.add_user,
            User(id="alice", username="alice", role=Role.USER, created_at=T0),
            hash_password(ALICE_PASSWORD),
        )
        admin = Principal(kind="user", id="root", role=Role.ADMIN)
        actor = Principal(kind="user", id=alice.id, role=Role.USER)
        registered = await Machines(hub).create(admin, "web-1", owner_id=alice.id)
        machine = registered.machine
        await Machines(hub).create(admin, "db-1", owner_id=alice.id)
        rule = await Rules(hub).create(
            actor, name="hot", metric="cpu.percent", comparison=Comparison.GT, threshold=80
        )
        await hub.run_sync(state.add_channel, _channel(alice.id))
        for minute in range(0, HOURS * 60, 2):
            clock.now = T0 + timedelta(minutes=minute)
            cpu = 90.0 if minute % 60 < 10 else 10.0 + minute % 7
            readings = [
                Reading("cpu.percent", cpu),
                Reading("disk.used", 1000 + minute, {"mount": "/"}),
                Reading("disk.used", 5000 - minute, {"mount": "/var"}),
            ]
            await hub.ingest(machine.id, [Sample(clock.now, readings)])
            if minute % 60 == 58:
                await hub.maintain()
        # The newest series ids belong to a machine removed since: never reused.
        gone = await hub.add_machine("gone", owner_id=alice.id)
        await hub.ingest(gone.id, [Sample(clock.now, [Reading("proc.count", 3)])])
        await hub.remove_machine(gone.id)
        await hub.run_sync(state.fan_out, clock.now)
        await hub.run_sync(
            state.add_silence,
            Silence(
                id=new_id(),
                owner_id=alice.id,
                starts_at=T0,
                ends_at=T0 + timedelta(days=1),
                rule_id=rule.id,
                comment="maintenance",
                created_at=T0,
            ),
        )
        await hub.run_sync(state.add_login_failure, "alice", T0, "127.0.0.1")
        profile = await CredentialProfiles(hub).create(
            actor, ProfileFields(name="corp", username="svc"), SECRET_PASSWORD
        )
        device = await Devices(hub).add(actor, "srv-01.example.test")
        await Monitors(hub).create(
            actor,
            device_id=device.id,
            credential_profile_id=profile.id,
            collector="stub",
            interval=timedelta(minutes=1),
        )
        discovery = await Discovery(hub).create(
            actor, name="lan", targets=["127.0.0.1"], ports=[1], collector="stub"
        )
        run = DiscoveryRun(id=new_id(), profile_id=discovery.id, owner_id=alice.id, started_at=T0)
        await hub.run_sync(state.add_discovery_run, run)
        session = await add_server_state(hub, alice.id, machine.id)
    return Deployment(data_dir, machine.id, registered.issued.secret, session, profile.id, clock)


async def add_server_state(hub: Sentri, user_id: str, machine_id: str) -> str:
    """A session (its token returned), a reset token, an agent claim and an agent config."""
    state = hub.storage.state
    session = issue_token(SESSION_PREFIX)
    until = datetime(2099, 1, 1, tzinfo=UTC)
    await hub.run_sync(
        state.add_session, Session(new_id(), user_id, session.hash, T0, until, "127.0.0.1")
    )
    reset = issue_token(RESET_PREFIX)
    await hub.run_sync(state.add_reset_token, ResetToken(new_id(), user_id, reset.hash, T0, until))
    claim = issue_token(CLAIM_PREFIX)
    await hub.run_sync(
        state.add_claim, AgentClaim(new_id(), claim.hash, "laptop", "0.1.0", T0, until)
    )
    await hub.run_sync(
        state.set_agent_config,
        AgentConfig(machine_id, timedelta(seconds=15), ("psutil",), updated_at=T0),
    )
    return session.secret


def _channel(owner_id: str) -> Channel:
    return Channel(
        id=new_id(),
        owner_id=owner_id,
        name="hooks",
        type="webhook",
        config={"url": "http://127.0.0.1:9/hook"},
        created_at=T0,
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """One filled deployment, copied by several tests (each copies into a new target)."""
    data_dir = tmp_path_factory.mktemp("source") / "data"
    return anyio.run(populate, data_dir)


@pytest.fixture
def source(deployment: Deployment) -> Iterator[Engine]:
    engine = open_engine(sqlite_url(deployment.data_dir), must_exist=True)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_target(postgres_url: str) -> Iterator[tuple[str, Engine]]:
    """A URL (its search path in it) and an engine on a schema of this test's own."""
    name = f"lscopy_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={name}"})
    engine = sa.create_engine(url)
    try:
        yield url.render_as_string(hide_password=False), engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


def counts(engine: Engine) -> dict[str, int]:
    """Rows per table; the latest values as ``series_latest``, a row per series in
    either form (``latest_values`` is PostgreSQL's form of them)."""
    with engine.connect() as conn:
        found = {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in metadata.sorted_tables
            if t is not latest_values
        }
        found["series_latest"] = latest.count(conn)
        return found


def series_ids(
    engine: Engine, metric: str | None = None, *, machine_id: str | None = None
) -> list[int]:
    select = sa.select(series.c.id)
    if metric is not None:
        select = select.where(series.c.metric == metric)
    if machine_id is not None:
        select = select.where(series.c.machine_id == machine_id)
    with engine.connect() as conn:
        return list(conn.execute(select).scalars())


def chunk_starts(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(metric_chunks.c.chunk_start)).scalars())


def series_counter(sqlite: Engine) -> int:
    """The last series id a SQLite database handed out (deleted ones included)."""
    with sqlite.connect() as conn:
        query = sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'series'")
        return int(conn.execute(query).scalar_one())


EXPECTED_FILLED = {
    "users",
    "machines",
    "api_keys",
    "alert_rules",
    "alert_states",
    "alert_events",
    "channels",
    "outbox_events",
    "deliveries",
    "silences",
    "audit_log",
    "login_failures",
    "series",
    "series_latest",
    "machine_series",
    "metric_chunks",
    "samples_head",
    "storage_meta",
    "credential_profiles",
    "devices",
    "monitors",
    "discovery_profiles",
    "discovery_runs",
    "sessions",
    "reset_tokens",
    "agent_claims",
    "agent_configs",
    "status_changes",
}


async def answers(hub: Sentri, deployment: Deployment) -> dict[str, Any]:
    """What queries of the copied data return (latest, and history at several steps)."""
    machine = deployment.machine_id
    result: dict[str, Any] = {"latest": await hub.latest(machine)}
    for step, aggregation in [
        (timedelta(minutes=2), "avg"),
        (timedelta(minutes=10), "max"),
        (timedelta(hours=1), "min"),
        (timedelta(hours=1), "last"),
    ]:
        for metric in ("cpu.percent", "disk.used"):
            result[f"{metric}/{step}/{aggregation}"] = await hub.history(
                machine,
                metric,
                start=T0,
                end=T0 + timedelta(hours=HOURS + 1),
                step=step,
                aggregation=aggregation,
            )
    result["series"] = await hub.series(machine)
    return result


@pytest.mark.postgres
async def test_a_sqlite_deployment_moves_to_postgres_and_answers_the_same(
    deployment: Deployment, source: Engine, pg_target: tuple[str, Engine]
) -> None:
    _, target = pg_target
    seen: list[Progress] = []
    report = copy_database(source, target, progress=seen.append, batch_rows=7)
    assert report.ok
    copied = counts(target)
    machine_series = len(series_ids(target, machine_id=deployment.machine_id))
    assert copied == counts(source)
    assert {t.table: t.target for t in report.tables} == copied
    assert {name for name, rows in copied.items() if rows} >= EXPECTED_FILLED
    copied_tables = [t.name for t in metadata.sorted_tables if t is not latest_values]
    assert [p.table for p in seen if p.finished] == copied_tables

    target_store = SqlStorage(target)
    clock = deployment.clock
    config = settings(deployment.data_dir)
    async with Sentri(config, plugins=stub_plugins(), clock=clock) as before:
        expected = await answers(before, deployment)
    async with Sentri(config, plugins=stub_plugins(), clock=clock, storage=target_store) as hub:
        assert await answers(hub, deployment) == expected
        assert expected["cpu.percent/1:00:00/min"][0].points  # the queries found data
        # The machine's API key still authenticates, the password still verifies.
        principal = await hub.authenticate(
            Credentials(headers={"authorization": f"Bearer {deployment.api_key}"})
        )
        assert principal is not None
        assert principal.id == deployment.machine_id
        user = await hub.authenticate(
            Credentials(headers={"authorization": f"Bearer {deployment.session}"})
        )
        assert user is not None
        assert user.id == "alice"
        stored_hash = await hub.run_sync(hub.storage.state.password_hash, "alice")
        assert verify_password(ALICE_PASSWORD, stored_hash)
        # The sealed secret still opens: same profile id, same key file.
        credential = await hub.credentials.remote_credential(deployment.profile_id)
        assert credential.password == SECRET_PASSWORD
        # New rows get fresh serial values (sequences were moved past the copy).
        clock.now = T0 + timedelta(hours=HOURS, minutes=5)
        await hub.ingest(
            deployment.machine_id,
            [Sample(clock.now, [Reading("net.rx_rate", 5.0, {"nic": "eth9"})])],
        )
        await Machines(hub).create(
            Principal(kind="user", id="root", role=Role.ADMIN), "new-1", owner_id="alice"
        )
        await hub.run_sync(hub.storage.state.add_login_failure, "alice", clock.now, None)
        await hub.maintain()
        latest = await hub.latest(deployment.machine_id, "net.rx_rate")
        assert [v.value for v in latest] == [5.0]
    (new_id_,) = series_ids(target, "net.rx_rate")
    assert new_id_ > series_counter(source) > max(series_ids(source))
    after = counts(target)
    with target.connect() as conn:
        # The copied history landed in the DEFAULT partition (no day partitions
        # that old); the hub's maintenance gave each of its days a partition.
        in_default = conn.execute(sa.text(f"SELECT count(*) FROM {DEFAULT_PARTITION}")).scalar()
        days = {p.lo for p in list_partitions(conn)}
    assert in_default == 0
    assert days >= {window(start) for start in chunk_starts(target)}
    # The machine's series only: once the clock moves, the agentless poller may
    # poll its due monitor (and add that machine's series) before the hub stops.
    assert len(series_ids(target, machine_id=deployment.machine_id)) == machine_series + 1
    assert after["login_failures"] == copied["login_failures"] + 1
    assert after["audit_log"] > copied["audit_log"]


async def test_sqlite_to_sqlite_copies_everything(
    deployment: Deployment, source: Engine, tmp_path: Path
) -> None:
    target = open_engine(f"sqlite:///{tmp_path / 'copy.db'}")
    try:
        report = copy_database(source, target)
        assert report.ok
        assert counts(target) == counts(source)
        async with Sentri(
            settings(deployment.data_dir),
            plugins=stub_plugins(),
            clock=deployment.clock,
            storage=SqlStorage(target),
        ) as hub:
            credential = await hub.credentials.remote_credential(deployment.profile_id)
            assert credential.password == SECRET_PASSWORD
            assert series_counter(target) == series_counter(source)
            before = await hub.run_sync(hub.storage.state.list_audit)
            await Machines(hub).create(
                Principal(kind="user", id="root", role=Role.ADMIN), "new-2", owner_id="alice"
            )
            assert len(await hub.run_sync(hub.storage.state.list_audit)) > len(before)
    finally:
        target.dispose()


async def test_a_target_with_data_is_refused_and_left_alone(source: Engine, tmp_path: Path) -> None:
    target = open_engine(f"sqlite:///{tmp_path / 'copy.db'}")
    try:
        copy_database(source, target)
        before = counts(target)
        with pytest.raises(StorageError, match=r"is not empty \(table \w+ has rows\)"):
            copy_database(source, target)
        assert counts(target) == before
    finally:
        target.dispose()


def test_copying_a_database_onto_itself_is_refused(deployment: Deployment) -> None:
    data = deployment.data_dir
    source = open_engine(f"sqlite:///{data / 'lunasentri.db'}")
    same = open_engine(f"sqlite:///{data / '..' / data.name / 'lunasentri.db'}")
    try:
        with pytest.raises(StorageError, match="source and target are the same database"):
            copy_database(source, same)
    finally:
        source.dispose()
        same.dispose()


def test_a_freshly_migrated_target_counts_as_empty(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        SqlStorage(engine).migrate()
        check_target_empty(engine, "fresh")  # storage_meta's own rows do not count
    finally:
        engine.dispose()


def test_a_source_at_another_revision_is_refused_naming_both(
    tmp_path: Path, deployment: Deployment
) -> None:
    old = tmp_path / "old.db"
    old.write_bytes((deployment.data_dir / "lunasentri.db").read_bytes())
    engine = open_engine(f"sqlite:///{old}", must_exist=True)
    target = open_engine(f"sqlite:///{tmp_path / 'copy.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE lunasentri_alembic_version SET version_num = '0005'"))
        from lunasentri_core.storage.sql import head_revision

        with pytest.raises(StorageError) as caught:
            copy_database(engine, target)
        message = str(caught.value)
        assert "revision 0005" in message
        assert f"expects {head_revision()}" in message
        assert "lunasentri db migrate" in message
        assert not (tmp_path / "copy.db").exists() or counts(target)["users"] == 0
    finally:
        engine.dispose()
        target.dispose()


def test_a_missing_source_file_is_refused_not_created(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        open_engine(f"sqlite:///{tmp_path / 'nothing.db'}", must_exist=True)
    assert not (tmp_path / "nothing.db").exists()


def test_urls_are_shown_without_passwords() -> None:
    shown = redact("postgresql+psycopg://ops:hunter2@db.example/lunasentri")
    assert "hunter2" not in shown
    assert shown == "postgresql+psycopg://ops:***@db.example/lunasentri"
    with pytest.raises(StorageError, match="copy supports sqlite: and postgresql:"):
        open_engine("mysql://ops:hunter2@db.example/x")


# --------------------------------------------------------------------------- the command


def lunasentri(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_")}
    root = Path(__file__).resolve().parents[2]
    paths = [str(root / "src"), *(str(p) for p in sorted((root / "plugins").glob("*/src")))]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "lunasentri_core.cli", "db", "copy", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.mark.postgres
def test_the_command_copies_verifies_and_redacts(
    deployment: Deployment, pg_target: tuple[str, Engine]
) -> None:
    url, target = pg_target
    with_password = make_url(url).set(password="not-needed-by-trust")
    shown = with_password.render_as_string(hide_password=False)
    done = lunasentri(sqlite_url(deployment.data_dir), shown)
    assert done.returncode == 0, done.stderr
    assert "not-needed-by-trust" not in done.stdout + done.stderr
    assert "***" in done.stdout
    assert "metric_chunks:" in done.stdout
    assert "counts verified" in done.stdout
    assert "MISMATCH" not in done.stdout
    assert counts(target)["users"] == 1

    again = lunasentri(sqlite_url(deployment.data_dir), shown)
    assert again.returncode == 1
    assert re.search(r"is not empty \(table \w+ has rows\)", again.stderr)
    assert "not-needed-by-trust" not in again.stdout + again.stderr


def test_the_command_fails_cleanly_on_a_missing_source(tmp_path: Path) -> None:
    done = lunasentri(f"sqlite:///{tmp_path / 'none.db'}", f"sqlite:///{tmp_path / 'to.db'}")
    assert done.returncode == 1
    assert "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.postgres
async def test_postgres_copies_back_to_sqlite(
    deployment: Deployment, source: Engine, pg_target: tuple[str, Engine], tmp_path: Path
) -> None:
    _, on_postgres = pg_target
    assert copy_database(source, on_postgres).ok
    back = open_engine(f"sqlite:///{tmp_path / 'back.db'}")
    try:
        # Small batches: the PostgreSQL side is read through a server-side cursor.
        assert copy_database(on_postgres, back, batch_rows=5).ok
        assert counts(back) == counts(source)
        async with Sentri(
            settings(deployment.data_dir),
            plugins=stub_plugins(),
            clock=deployment.clock,
            storage=SqlStorage(back),
        ) as hub:
            assert (await hub.credentials.remote_credential(deployment.profile_id)).password == (
                SECRET_PASSWORD
            )
            principal = await hub.authenticate(
                Credentials(headers={"authorization": f"Bearer {deployment.api_key}"})
            )
            assert principal is not None
    finally:
        back.dispose()


def test_the_command_fails_when_the_counts_differ(deployment: Deployment, tmp_path: Path) -> None:
    """A target that loses rows (here: a trigger) is reported table by table, exit 1."""
    path = tmp_path / "lossy.db"
    engine = open_engine(f"sqlite:///{path}")
    try:
        SqlStorage(engine).migrate()
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TRIGGER lose_audit AFTER INSERT ON audit_log "
                    "BEGIN DELETE FROM audit_log WHERE seq = NEW.seq; END"
                )
            )
    finally:
        engine.dispose()
    done = lunasentri(sqlite_url(deployment.data_dir), f"sqlite:///{path}")
    assert done.returncode == 1
    (line,) = [row for row in done.stdout.splitlines() if row.startswith("audit_log ")]
    assert line.split()[-2:] == ["0", "MISMATCH"]
    assert "row counts differ for audit_log" in done.stderr
    assert "copy again" in done.stderr


@pytest.mark.postgres
def test_a_copy_that_fails_half_way_leaves_the_target_empty(
    source: Engine, pg_target: tuple[str, Engine]
) -> None:
    """One transaction: tables copied before the failing one are rolled back too."""
    _, target = pg_target
    SqlStorage(target).migrate()
    with target.begin() as conn:
        conn.execute(
            sa.text("ALTER TABLE users ADD CONSTRAINT no_alice CHECK (username <> 'alice')")
        )
    order = [t.name for t in metadata.sorted_tables]
    assert order.index("audit_log") < order.index("users")
    with pytest.raises(StorageError, match=r"copying users: .*no_alice"):
        copy_database(source, target)
    assert not any(rows for name, rows in counts(target).items() if name != "storage_meta")
    with target.begin() as conn:
        conn.execute(sa.text("ALTER TABLE users DROP CONSTRAINT no_alice"))
    assert copy_database(source, target).ok  # the same command simply runs again
