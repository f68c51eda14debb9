"""No read or write across users: random sequences of users, machines and requests.

A hypothesis state machine drives one real server: users come and go, register
machines (also through an administrator), ingest through each machine's key,
rename, rotate keys, delete, and add alert rules, notification channels and
silences (rules fire on the values ingested, so alert events, outbox events and
deliveries appear too); meanwhile random users aim every owner-scoped request
at machines and records they do not own. Invariants after every step: each user
lists exactly their own machines with exactly the values their own keys wrote,
and exactly their own rules, channels and silences, and only alert events,
events and deliveries of their own; an administrator lists all; and a foreign
request is a 404 that changed nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import httpx
import pytest
from agentless.door import PASSWORD as DOOR_PASSWORD
from agentless.door import USERNAME as DOOR_USERNAME
from agentless.door import door_plugins
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from .conftest import LiveServer
from .notifier_double import plugins
from .openapi_check import ApiDoc, Http, fetch_document, is_stream, running

PASSWORD = "a long enough password 42"
METRIC = "cpu.percent"
USERS = {"alice": "user", "bob": "user", "carol": "user", "dave": "admin"}
MAX_MACHINES = 6


@attrs.define(eq=False)
class Account:
    id: str
    username: str
    token: str
    session_id: str
    admin: bool = False


@attrs.define(eq=False)
class Box:
    """A machine as its owner knows it."""

    id: str
    owner: Account
    name: str
    key: str
    key_id: str
    value: float | None = None
    last_written: datetime | None = None


@attrs.define(eq=False)
class Record:
    """An alert rule, a channel or a silence, as its owner knows it."""

    kind: str
    id: str
    owner: Account

    @property
    def path(self) -> str:
        return f"{RECORD_PATHS[self.kind]}/{self.id}"


@attrs.define
class World:
    """The server and what is on it, across all examples of one test."""

    server: LiveServer
    http: Http
    doc: ApiDoc
    admin: Account
    users: list[Account] = attrs.Factory(list)
    boxes: list[Box] = attrs.Factory(list)
    records: list[Record] = attrs.Factory(list)
    """Silences stay listed once ended, so they are kept across examples."""
    polled: dict[str, tuple[Account, str]] = attrs.Factory(dict)
    """Agentless machines (made by monitors): id -> (owner, name)."""
    counter: Iterator[int] = attrs.Factory(itertools.count)

    def call(
        self, token: str | None, method: str, path: str, expect: int, **kwargs: Any
    ) -> httpx.Response:
        response = self.http.request(method, path, token, **kwargs)
        assert response.status_code == expect, (method, path, response.text)
        problems = self.doc.check(response, streamed=is_stream(response))
        assert problems == [], problems
        return response


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    isolation = tmp_path_factory.mktemp("isolation")
    # No scheduled polls: a poll changes a monitor's record between two reads.
    quiet = {"agentless": {"enabled": False}}
    for server in running(isolation, plugins={**plugins(), **door_plugins()}, overrides=quiet):
        with Http(server) as http:
            token = server.login()
            me = http.request("GET", "/api/v1/auth/me", token).json()
            sessions = http.request("GET", "/api/v1/auth/sessions", token).json()["items"]
            admin = Account(me["id"], "admin", token, sessions[0]["id"], admin=True)
            world = World(server, http, ApiDoc(fetch_document(server)), admin)
            world.users = [add_user(world, name, role) for name, role in USERS.items()]
            yield world


def add_user(w: World, username: str, role: str) -> Account:
    """A logged-in user (made once per module: password hashing is slow on purpose)."""
    body = {"username": username, "password": PASSWORD, "role": role}
    user_id = w.call(w.admin.token, "POST", "/api/v1/users", 201, json=body).json()["id"]
    token = w.server.login(username, PASSWORD)
    session = w.call(token, "GET", "/api/v1/auth/sessions", 200).json()["items"][0]
    return Account(user_id, username, token, session["id"], admin=role == "admin")


# Every owner-scoped request, as (method, path, body); {m} a machine, {k} its key, {u}
# its owner, {s} one of the owner's sessions.
FOREIGN_REQUESTS = [
    ("GET", "/api/v1/machines/{m}", None),
    ("PATCH", "/api/v1/machines/{m}", {"name": "taken-over"}),
    ("PATCH", "/api/v1/machines/{m}", {"labels": {"owned": "yes"}}),
    ("DELETE", "/api/v1/machines/{m}", None),
    ("GET", "/api/v1/machines/{m}/keys", None),
    ("POST", "/api/v1/machines/{m}/keys/rotate", {"grace_seconds": 0}),
    ("POST", "/api/v1/machines/{m}/keys/rotate", None),
    ("POST", "/api/v1/machines/{m}/keys/{k}/revoke", None),
    ("GET", "/api/v1/machines/{m}/latest", None),
    ("GET", "/api/v1/machines/{m}/history?metric=cpu.percent", None),
    ("GET", "/api/v1/machines/{m}/agent-config", None),
    ("PUT", "/api/v1/machines/{m}/agent-config", {"interval": 1, "collectors": ["cpu"]}),
    ("GET", "/api/v1/machines/{m}/stream", None),
    ("GET", "/api/v1/machines/{m}/status-changes", None),
    ("PATCH", "/api/v1/machines/{m}", {"offline_after": 60}),
    ("GET", "/api/v1/users/{u}", None),
    ("GET", "/api/v1/users/{u}/export", None),
    ("DELETE", "/api/v1/auth/sessions/{s}", None),
]
# A machine key on any of them is the wrong kind of credential.
KEY_REQUESTS = [r for r in FOREIGN_REQUESTS if "{m}" in r[1]]

RECORD_PATHS = {
    "rule": "/api/v1/alert-rules",
    "channel": "/api/v1/channels",
    "silence": "/api/v1/silences",
    "profile": "/api/v1/credential-profiles",
    "device": "/api/v1/devices",
    "monitor": "/api/v1/monitors",
    "discovery": "/api/v1/discovery-profiles",
}
# Every request on one record, as (kind, method, suffix, body).
FOREIGN_RECORD_REQUESTS = [
    ("rule", "GET", "", None),
    ("rule", "PATCH", "", {"threshold": 1}),
    ("rule", "PATCH", "", {"scope": {"labels": {}}}),
    ("rule", "DELETE", "", None),
    ("channel", "GET", "", None),
    ("channel", "PATCH", "", {"enabled": False}),
    ("channel", "PATCH", "", {"config": {"url": "http://127.0.0.1:9/stolen"}}),
    ("channel", "DELETE", "", None),
    ("channel", "POST", "/test", None),
    ("silence", "GET", "", None),
    ("silence", "DELETE", "", None),
    ("profile", "GET", "", None),
    ("profile", "PATCH", "", {"name": "stolen"}),
    ("profile", "PATCH", "", {"password": "stolen", "username": "thief"}),
    ("profile", "DELETE", "", None),
    ("profile", "POST", "/test", {"host": "127.0.0.1", "collector": "door"}),
    ("device", "GET", "", None),
    ("device", "DELETE", "", None),
    ("monitor", "GET", "", None),
    ("monitor", "PATCH", "", {"enabled": False}),
    ("monitor", "PATCH", "", {"interval": 5, "options": {"stolen": True}}),
    ("monitor", "POST", "/disable", None),
    ("monitor", "POST", "/poll", None),
    ("monitor", "DELETE", "", None),
    ("discovery", "GET", "", None),
    ("discovery", "PATCH", "", {"name": "taken-over"}),
    ("discovery", "PATCH", "", {"targets": ["127.71.50.9"], "ports": [10]}),
    ("discovery", "DELETE", "", None),
    ("discovery", "POST", "/run", None),
    ("discovery", "POST", "/run", {"confirm_large": True}),
    ("discovery", "GET", "/runs", None),
]
# Every request on one discovery run, as (method, suffix).
FOREIGN_RUN_REQUESTS = [("GET", ""), ("GET", "/events")]
UNREACHABLE = "http://127.0.0.1:9/hook"
"""Where channels point: deliveries to it stay pending, retried."""


class Isolation(RuleBasedStateMachine):
    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.records: list[Record] = []
        self.runs: list[tuple[str, Account]] = []
        """Discovery runs made in this example, with their owners."""
        """Records made in this example: the only ones drawn from, since ended silences
        outlive examples, and draws that depend on earlier examples make Hypothesis's
        data generation inconsistent (FlakyStrategyDefinition)."""

    # ------------------------------------------------------------------- helpers

    def fill(self, path: str, box: Box) -> str:
        return path.format(m=box.id, k=box.key_id, u=box.owner.id, s=box.owner.session_id)

    def victim_state(self, box: Box) -> dict[str, Any]:
        """Everything about ``box`` a foreign request might change, as its owner sees it."""
        w, token, base = self.world, box.owner.token, f"/api/v1/machines/{box.id}"
        paths = (base, f"{base}/keys", f"{base}/agent-config", "/api/v1/auth/sessions")
        return {path: w.call(token, "GET", path, 200).json() for path in paths}

    def accounts(self) -> list[Account]:
        return [self.world.admin, *self.world.users]

    # ------------------------------------------------------------------- rules

    @initialize(data=st.data(), count=st.integers(1, 3))
    def some_machines(self, data: st.DataObject, count: int) -> None:
        """Every example starts with machines (rules may be switched off in an example)."""
        for _ in range(count):
            self.register(data, by_admin=data.draw(st.booleans(), label="by admin"))
        w = self.world
        for account in self.accounts():
            w.call(account.token, "GET", "/api/v1/users", 200 if account.admin else 403)

    @precondition(lambda self: len(self.world.boxes) < MAX_MACHINES)
    @rule(data=st.data(), by_admin=st.booleans())
    def register(self, data: st.DataObject, by_admin: bool) -> None:
        w = self.world
        owner = data.draw(st.sampled_from(self.accounts()), label="owner")
        name = f"m{next(w.counter)}"
        body: dict[str, Any] = {"name": name, "labels": {"owner": owner.username}}
        caller = owner
        if by_admin:
            caller, body["owner_id"] = w.admin, owner.id
        created = w.call(caller.token, "POST", "/api/v1/machines", 201, json=body).json()
        assert created["machine"]["owner_id"] == owner.id
        box = Box(created["machine"]["id"], owner, name, created["api_key"], created["key"]["id"])
        w.boxes.append(box)

    @precondition(lambda self: self.world.boxes)
    @rule(data=st.data(), values=st.lists(st.floats(0, 100), min_size=1, max_size=3))
    def ingest(self, data: st.DataObject, values: list[float]) -> None:
        for value in values:
            self.write(data.draw(st.sampled_from(self.world.boxes), label="machine"), value)

    def write(self, box: Box, value: float) -> None:
        when = datetime.now(UTC)
        if box.last_written is not None and when <= box.last_written:
            when = box.last_written + timedelta(milliseconds=1)
        sample = {"timestamp": when.isoformat(), "metrics": {METRIC: value}}
        response = self.world.call(
            box.key, "POST", "/api/v1/ingest", 200, json={"samples": [sample]}
        )
        assert response.json() == {"accepted": 1}
        box.value, box.last_written = value, when

    @precondition(lambda self: self.world.boxes and self.world.users)
    @rule(data=st.data(), request=st.sampled_from(FOREIGN_REQUESTS))
    def foreign_request(self, data: st.DataObject, request: tuple[str, str, Any]) -> None:
        w = self.world
        attacker = data.draw(
            st.sampled_from([u for u in w.users if not u.admin] or [None]), label="attacker"
        )
        victims = [b for b in w.boxes if attacker is not None and b.owner is not attacker]
        if not victims:
            return
        box = data.draw(st.sampled_from(victims), label="victim")
        method, path, body = request
        before = self.victim_state(box)
        kwargs = {} if body is None else {"json": body}
        response = w.call(attacker.token, method, self.fill(path, box), 404, **kwargs)
        assert response.json()["error"]["code"] == "not_found"
        assert self.victim_state(box) == before

    @precondition(lambda self: len(self.world.boxes) >= 1)
    @rule(data=st.data(), request=st.sampled_from(KEY_REQUESTS))
    def machine_key_on_user_endpoints(
        self, data: st.DataObject, request: tuple[str, str, Any]
    ) -> None:
        w = self.world
        holder = data.draw(st.sampled_from(w.boxes), label="key holder")
        box = data.draw(st.sampled_from(w.boxes), label="target")
        method, path, body = request
        before = self.victim_state(box)
        kwargs = {} if body is None else {"json": body}
        w.call(holder.key, method, self.fill(path, box), 403, **kwargs)
        assert self.victim_state(box) == before
        config = w.call(holder.key, "GET", "/api/v1/agent/config", 200).json()
        assert config["machine_id"] == holder.id

    @precondition(lambda self: self.world.boxes)
    @rule(data=st.data())
    def owner_or_admin_reads(self, data: st.DataObject) -> None:
        w = self.world
        box = data.draw(st.sampled_from(w.boxes), label="machine")
        admins = [a for a in self.accounts() if a.admin]
        reader = data.draw(st.sampled_from([box.owner, *admins]), label="reader")
        machine = w.call(reader.token, "GET", f"/api/v1/machines/{box.id}", 200).json()
        assert (machine["name"], machine["owner_id"]) == (box.name, box.owner.id)
        latest = w.call(reader.token, "GET", f"/api/v1/machines/{box.id}/latest", 200).json()
        assert {i["value"] for i in latest["items"] if i["metric"] == METRIC} == (
            set() if box.value is None else {box.value}
        )
        export = w.call(reader.token, "GET", f"/api/v1/users/{box.owner.id}/export", 200).json()
        polled = {m for m, (owner, _) in w.polled.items() if owner is box.owner}
        assert {m["id"] for m in export["machines"]} == {
            b.id for b in w.boxes if b.owner is box.owner
        } | polled

    @precondition(lambda self: self.world.boxes)
    @rule(data=st.data())
    def rename(self, data: st.DataObject) -> None:
        w = self.world
        box = data.draw(st.sampled_from(w.boxes), label="machine")
        name = f"m{next(w.counter)}"
        w.call(box.owner.token, "PATCH", f"/api/v1/machines/{box.id}", 200, json={"name": name})
        box.name = name

    @precondition(lambda self: self.world.boxes)
    @rule(data=st.data())
    def rotate(self, data: st.DataObject) -> None:
        w = self.world
        box = data.draw(st.sampled_from(w.boxes), label="machine")
        path = f"/api/v1/machines/{box.id}/keys/rotate"
        issued = w.call(box.owner.token, "POST", path, 201, json={"grace_seconds": 0}).json()
        w.call(box.key, "GET", "/api/v1/agent/config", 401)
        box.key, box.key_id = issued["api_key"], issued["key"]["id"]

    @precondition(lambda self: self.world.boxes)
    @rule(data=st.data())
    def delete_machine(self, data: st.DataObject) -> None:
        w = self.world
        box = data.draw(st.sampled_from(w.boxes), label="machine")
        w.call(box.owner.token, "DELETE", f"/api/v1/machines/{box.id}", 204)
        w.boxes.remove(box)
        w.call(box.key, "GET", "/api/v1/agent/config", 401)
        sample = {"timestamp": datetime.now(UTC).isoformat(), "metrics": {METRIC: 1.0}}
        w.call(box.key, "POST", "/api/v1/ingest", 401, json={"samples": [sample]})
        w.call(w.admin.token, "GET", f"/api/v1/machines/{box.id}", 404)

    # ------------------------------------------------------------------- alerting

    def record_state(self, record: Record) -> Any:
        return self.world.call(record.owner.token, "GET", record.path, 200).json()

    def add_record(self, kind: str, owner: Account, body: dict[str, Any]) -> str:
        w = self.world
        created = w.call(owner.token, "POST", RECORD_PATHS[kind], 201, json=body).json()
        assert created["owner_id"] == owner.id
        record = Record(kind, created["id"], owner)
        w.records.append(record)
        self.records.append(record)
        return str(created["id"])

    @precondition(lambda self: self.world.boxes)
    @rule(
        data=st.data(),
        threshold=st.sampled_from([25.0, 50.0, 75.0]),
        breach=st.booleans(),
        notify=st.booleans(),
    )
    def add_rule(self, data: st.DataObject, threshold: float, breach: bool, notify: bool) -> None:
        """A rule on a machine; with ``breach`` the machine then crosses it (an alert event),
        with ``notify`` its owner gets a channel first (a delivery)."""
        box = data.draw(st.sampled_from(self.world.boxes), label="watched machine")
        scope = data.draw(
            st.sampled_from([{"machine_id": box.id}, {"labels": {"owner": box.owner.username}}]),
            label="scope",
        )
        body = {
            "name": f"r{next(self.world.counter)}",
            "metric": METRIC,
            "comparison": ">",
            "threshold": threshold,
            "scope": scope,
        }
        if notify:
            self.add_channel_of(box.owner)
        self.add_record("rule", box.owner, body)
        if breach:
            self.write(box, 99.0)

    @rule(data=st.data())
    def add_channel(self, data: st.DataObject) -> None:
        self.add_channel_of(data.draw(st.sampled_from(self.accounts()), label="owner"))

    def add_channel_of(self, owner: Account) -> None:
        body = {
            "name": f"c{next(self.world.counter)}",
            "type": "loopback",
            "config": {"url": UNREACHABLE, "token": f"secret-of-{owner.username}"},
        }
        self.add_record("channel", owner, body)

    @rule(data=st.data())
    def add_silence(self, data: st.DataObject) -> None:
        owner = data.draw(st.sampled_from(self.accounts()), label="owner")
        # A rack no machine is in: it mutes nothing, so deliveries keep appearing.
        body = {"labels": {"rack": "none"}, "duration": 3600}
        self.add_record("silence", owner, body)

    @rule(data=st.data())
    def add_monitor(self, data: st.DataObject) -> None:
        """A credential profile, a device and a monitor of it (which makes a machine)."""
        w = self.world
        owner = data.draw(st.sampled_from(self.accounts()), label="owner")
        number = next(w.counter)
        body = {"name": f"p{number}", "username": DOOR_USERNAME, "password": DOOR_PASSWORD}
        profile = self.add_record("profile", owner, body)
        device = self.add_record("device", owner, {"address": f"host{number}.example.test"})
        body = {"device_id": device, "credential_profile_id": profile, "collector": "plain"}
        monitor = w.call(owner.token, "POST", RECORD_PATHS["monitor"], 201, json=body).json()
        record = Record("monitor", monitor["id"], owner)
        w.records.append(record)
        self.records.append(record)
        machine = w.call(owner.token, "GET", f"/api/v1/machines/{monitor['machine_id']}", 200)
        w.polled[monitor["machine_id"]] = (owner, machine.json()["name"])

    def add_discovery(self, data: st.DataObject) -> None:
        """A discovery profile and one run of it (nothing listens there: it ends fast)."""
        owner = data.draw(st.sampled_from(self.accounts()), label="owner")
        body = {
            "name": f"d{next(self.world.counter)}",
            "targets": ["127.71.50.1"],
            "ports": [9],
            "timeout": 0.5,
        }
        self.add_record("discovery", owner, body)
        record = self.records[-1]
        run = self.world.call(owner.token, "POST", f"{record.path}/run", 202).json()
        assert (run["owner_id"], run["profile_id"]) == (owner.id, record.id)
        self.runs.append((run["id"], owner))

    @precondition(lambda self: self.runs and self.world.users)
    @rule(data=st.data(), request=st.sampled_from(FOREIGN_RUN_REQUESTS))
    def foreign_run_request(self, data: st.DataObject, request: tuple[str, str]) -> None:
        w = self.world
        attacker = data.draw(st.sampled_from([u for u in w.users if not u.admin]), "attacker")
        victims = [(run, owner) for run, owner in self.runs if owner is not attacker]
        if not victims:
            return
        run_id, owner = data.draw(st.sampled_from(victims), label="victim")
        method, suffix = request
        path = f"/api/v1/discovery-runs/{run_id}"
        before = w.call(owner.token, "GET", path, 200).json()
        response = w.call(attacker.token, method, path + suffix, 404)
        assert response.json()["error"]["code"] == "not_found"
        after = w.call(owner.token, "GET", path, 200).json()
        assert (after["id"], after["owner_id"]) == (before["id"], before["owner_id"])

    @precondition(lambda self: self.records and self.world.users)
    @rule(data=st.data(), request=st.sampled_from(FOREIGN_RECORD_REQUESTS))
    def foreign_record_request(
        self, data: st.DataObject, request: tuple[str, str, str, Any]
    ) -> None:
        w = self.world
        kind, method, suffix, body = request
        attacker = data.draw(st.sampled_from([u for u in w.users if not u.admin]), "attacker")
        victims = [r for r in self.records if r.kind == kind and r.owner is not attacker]
        if not victims:
            return
        record = data.draw(st.sampled_from(victims), label="victim")
        before = self.record_state(record)
        kwargs = {} if body is None else {"json": body}
        response = w.call(attacker.token, method, record.path + suffix, 404, **kwargs)
        assert response.json()["error"]["code"] == "not_found"
        assert self.record_state(record) == before
        assert "secret-of" not in response.text

    @precondition(lambda self: self.world.boxes and self.world.users)
    @rule(data=st.data())
    def foreign_event_and_delivery(self, data: st.DataObject) -> None:
        w = self.world
        attacker = data.draw(st.sampled_from([u for u in w.users if not u.admin]), "attacker")
        victim = data.draw(st.sampled_from([a for a in self.accounts() if a is not attacker]))
        # An admin victim lists everyone's, the attacker's own included: skip those.
        own = {box.id for box in w.boxes if box.owner is attacker}
        events = w.call(victim.token, "GET", "/api/v1/alert-events", 200).json()["items"]
        events = [e for e in events if e["machine_id"] not in own]
        for event in events[:1]:
            path = f"/api/v1/alert-events/{event['id']}/acknowledge"
            w.call(attacker.token, "POST", path, 404)
        sent = w.call(victim.token, "GET", "/api/v1/notifications", 200).json()["items"]
        sent = [d for d in sent if d["owner_id"] != attacker.id]
        for delivery in sent[:1]:
            w.call(attacker.token, "POST", f"/api/v1/notifications/{delivery['id']}/retry", 404)
        after = w.call(victim.token, "GET", "/api/v1/alert-events", 200).json()["items"]
        unchanged = {e["id"]: e["acknowledged_at"] for e in events}
        assert all(
            unchanged.get(e["id"], e["acknowledged_at"]) == e["acknowledged_at"] for e in after
        )

    def teardown(self) -> None:
        """No machines, rules or channels again, so each example starts from the same state."""
        w = self.world
        for box in w.boxes:
            w.http.request("DELETE", f"/api/v1/machines/{box.id}", w.admin.token)
        w.boxes.clear()
        # Newest first: a monitor goes before the device and profile it uses.
        for record in [r for r in reversed(w.records) if r.kind != "silence"]:
            response = w.http.request("DELETE", record.path, w.admin.token)
            assert response.status_code == 204, (record, response.text)
            w.records.remove(record)
        w.polled.clear()

    # ------------------------------------------------------------------- invariants

    @invariant()
    def everyone_lists_exactly_their_own(self) -> None:
        w = self.world
        for account in self.accounts():
            items = self._all_machines(account.token)
            listed = {item["id"]: item for item in items}
            assert len(listed) == len(items), "a machine came on two pages"
            mine = {b.id: b for b in w.boxes if account.admin or b.owner is account}
            polled = {
                machine_id: name
                for machine_id, (owner, name) in w.polled.items()
                if account.admin or owner is account
            }
            assert listed.keys() == mine.keys() | polled.keys(), account.username
            for machine_id, name in polled.items():
                assert (listed[machine_id]["name"], listed[machine_id]["kind"]) == (
                    name,
                    "agentless",
                )
            for machine_id, box in mine.items():
                item = listed[machine_id]
                assert (item["name"], item["owner_id"]) == (box.name, box.owner.id)
                values = {v["value"] for v in item["latest"]["values"] if v["metric"] == METRIC}
                assert values == (set() if box.value is None else {box.value}), box.name

    def _all_machines(self, token: str) -> list[dict[str, Any]]:
        """Every page of the list, two machines a page, following the cursors:
        a cursor must carry nobody else's machines into the caller's pages."""
        items: list[dict[str, Any]] = []
        query: dict[str, str] = {"limit": "2"}
        while True:
            body = self.world.call(token, "GET", "/api/v1/machines", 200, params=query).json()
            assert len(body["items"]) <= 2
            items.extend(body["items"])
            if body["next_cursor"] is None:
                return items
            query["cursor"] = body["next_cursor"]

    @invariant()
    def everyone_sees_only_their_own_alerting(self) -> None:
        w = self.world
        for account in self.accounts():
            for kind, path in RECORD_PATHS.items():
                items = w.call(account.token, "GET", path, 200).json()["items"]
                mine = {
                    r.id
                    for r in w.records
                    if r.kind == kind and (account.admin or r.owner is account)
                }
                assert {item["id"] for item in items} == mine, (account.username, kind)
            if account.admin:
                continue
            machines = {b.id for b in w.boxes if b.owner is account}
            channels = {r.id for r in w.records if r.kind == "channel" and r.owner is account}
            for path in ("/api/v1/alert-events", "/api/v1/alerts"):
                items = w.call(account.token, "GET", path, 200).json()["items"]
                assert {item["machine_id"] for item in items} <= machines, (account.username, path)
            sent = w.call(account.token, "GET", "/api/v1/notifications", 200).json()["items"]
            assert {d["owner_id"] for d in sent} <= {account.id}
            assert {d["channel_id"] for d in sent} <= channels
            events = w.call(account.token, "GET", "/api/v1/notification-events", 200).json()
            assert {e["owner_id"] for e in events["items"]} <= {account.id}


def test_no_user_reads_or_changes_another_users_machines(world: World) -> None:
    run_state_machine_as_test(
        lambda: Isolation(world),
        settings=settings(
            # Each step checks every invariant over HTTP for every account: 12 walks of
            # 12 steps keep this under two minutes on CI's two cores.
            max_examples=12,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
