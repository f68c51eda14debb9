"""Notification channels over real HTTP: config checks, masked secrets, test sends."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from lunasentri_core.services.channels import MASK, destination_fields, kept_secrets

from .alerting_support import Team, make_team, unique
from .notifier_double import Receiver, plugins
from .openapi_check import Http, running

CHANNELS = "/api/v1/channels"


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    for server in running(tmp_path_factory.mktemp("channels"), plugins=plugins()):
        with Http(server) as http:
            yield make_team(server, http)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def create(team: Team, token: str, config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = {"name": unique("ch"), "type": "loopback", "config": config, **fields}
    channel: dict[str, Any] = team.json(token, "POST", CHANNELS, 201, json=body)
    return channel


def test_secrets_show_once_then_masked(team: Team, receiver: Receiver) -> None:
    config = {"url": receiver.url, "token": "s3cret-token", "headers": {"x-api": "k3y"}}
    created = create(team, team.alice, config)
    assert created["config"] == {**config, "room": "general"}
    assert (created["type"], created["enabled"], created["disabled_reason"]) == (
        "loopback",
        True,
        None,
    )
    masked = {"url": receiver.url, "token": MASK, "headers": {"x-api": MASK}, "room": "general"}
    path = f"{CHANNELS}/{created['id']}"
    assert team.json(team.alice, "GET", path, 200)["config"] == masked
    listed = team.json(team.alice, "GET", CHANNELS, 200)["items"]
    assert next(c for c in listed if c["id"] == created["id"])["config"] == masked
    everything = team.call(team.admin, "GET", CHANNELS, 200).text
    audit = team.call(team.admin, "GET", "/api/v1/audit", 200, params={"limit": "1000"}).text
    for text in (everything, audit):
        assert "s3cret-token" not in text
        assert "k3y" not in text


def test_a_secret_left_out_is_generated_and_shown_once(team: Team, receiver: Receiver) -> None:
    created = create(team, team.alice, {"url": receiver.url})
    token = created["config"]["token"]
    assert token
    assert token != MASK
    fetched = team.json(team.alice, "GET", f"{CHANNELS}/{created['id']}", 200)
    assert fetched["config"]["token"] == MASK
    assert fetched["config"]["headers"] == {}, "an empty secret has nothing to hide"


def test_an_update_keeps_masked_or_omitted_secrets(team: Team, receiver: Receiver) -> None:
    created = create(team, team.alice, {"url": receiver.url, "token": "first-token"})
    path = f"{CHANNELS}/{created['id']}"
    shown = team.json(team.alice, "GET", path, 200)["config"]
    back = team.json(team.alice, "PATCH", path, 200, json={"config": {**shown, "room": "ops"}})
    assert back["config"] == {**shown, "room": "ops"}
    team.json(team.alice, "PATCH", path, 200, json={"config": {"url": receiver.url}})
    assert team.json(team.alice, "POST", f"{path}/test", 200)["status"] == "delivered"
    [message] = receiver.messages()
    assert message.headers["x-token"] == "first-token"
    assert message.body["room"] == "general", "a new config replaces the old one"

    team.json(team.alice, "PATCH", path, 200, json={"config": {**shown, "token": "second"}})
    team.json(team.alice, "POST", f"{path}/test", 200)
    assert receiver.messages()[-1].headers["x-token"] == "second"


@pytest.fixture
def elsewhere() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def test_a_new_url_needs_the_secrets_given_again(
    team: Team, receiver: Receiver, elsewhere: Receiver
) -> None:
    config = {"url": receiver.url, "token": "first-token", "headers": {"x-api": "k3y"}}
    created = create(team, team.alice, config)
    path = f"{CHANNELS}/{created['id']}"
    shown = team.json(team.alice, "GET", path, 200)["config"]
    before = team.json(team.alice, "GET", path, 200)
    moved = {**shown, "url": elsewhere.url}
    for sent, field in (
        (moved, "config.token"),  # everything sent back as shown
        ({**moved, "token": "new-token"}, "config.headers.x-api"),
        ({"url": elsewhere.url, "headers": {"x-api": "new-k3y"}}, "config.token"),
        ({"url": elsewhere.url, "token": "new-token"}, "config.headers"),
    ):
        error = team.error(team.alice, "PATCH", path, 422, json={"config": sent})
        assert error["field"] == field, (sent, error)
        assert "config.url" in error["message"], error
    assert team.json(team.alice, "GET", path, 200) == before

    team.json(team.alice, "POST", f"{path}/test", 200)
    assert elsewhere.messages() == [], "a stored secret went to the new URL"
    assert receiver.messages()[-1].headers["x-token"] == "first-token"

    given = {"url": elsewhere.url, "token": "new-token", "headers": {}}
    assert team.json(team.alice, "PATCH", path, 200, json={"config": given})["config"] == {
        **given,
        "token": MASK,
        "room": "general",
    }
    assert team.json(team.alice, "POST", f"{path}/test", 200)["status"] == "delivered"
    [message] = elsewhere.messages()
    assert message.headers["x-token"] == "new-token"
    assert "x-api" not in message.headers


def test_the_test_endpoint_sends_now_and_reports_the_outcome(
    team: Team, receiver: Receiver
) -> None:
    channel = create(team, team.alice, {"url": receiver.url})
    path = f"{CHANNELS}/{channel['id']}/test"
    assert team.json(team.alice, "POST", path, 200) == {
        "status": "delivered",
        "detail": "",
        "retry_after": None,
    }
    [message] = receiver.messages()
    assert message.body["kind"] == "test"
    assert message.headers["x-token"] == channel["config"]["token"]

    receiver.status = 503
    result = team.json(team.alice, "POST", path, 200)
    assert (result["status"], result["detail"]) == ("retry", "the receiver answered 503")
    receiver.status = 400
    result = team.json(team.alice, "POST", path, 200)
    assert result["status"] == "failed"
    assert result["detail"].startswith("the receiver answered 400")
    assert team.json(team.admin, "GET", "/api/v1/notifications", 200)["items"] == [], (
        "a test send does not go through the outbox"
    )


def test_test_sends_are_rate_limited_per_user(tmp_path: Path, receiver: Receiver) -> None:
    limits = {"channel_test_rate": 0.001, "channel_test_burst": 2}
    for server in running(tmp_path, plugins=plugins(), **limits):
        with Http(server) as http:
            team = make_team(server, http)
            alices = f"{CHANNELS}/{create(team, team.alice, {'url': receiver.url})['id']}/test"
            bobs = f"{CHANNELS}/{create(team, team.bob, {'url': receiver.url})['id']}/test"
            for _ in range(2):
                assert team.json(team.alice, "POST", alices, 200)["status"] == "delivered"
            refused = team.call(team.alice, "POST", alices, 429)
            # Another user has a bucket of their own, and a channel not found costs nothing.
            for _ in range(3):
                team.call(team.bob, "POST", alices, 404)
            assert team.json(team.bob, "POST", bobs, 200)["status"] == "delivered"

    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert len(receiver.messages()) == 3, "the refused test was not sent"


def test_an_unreachable_receiver_is_reported(team: Team) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    channel = create(team, team.alice, {"url": f"http://127.0.0.1:{port}/hook"})
    result = team.json(team.alice, "POST", f"{CHANNELS}/{channel['id']}/test", 200)
    assert result["status"] == "retry"
    assert result["detail"].startswith("cannot reach the receiver")


def test_disabling_and_re_enabling(team: Team, receiver: Receiver) -> None:
    channel = create(team, team.alice, {"url": receiver.url}, enabled=False)
    path = f"{CHANNELS}/{channel['id']}"
    assert channel["enabled"] is False
    assert team.json(team.alice, "POST", f"{path}/test", 200)["status"] == "delivered"
    enabled = team.json(team.alice, "PATCH", path, 200, json={"enabled": True})
    assert (enabled["enabled"], enabled["disabled_reason"]) == (True, None)
    renamed = team.json(team.alice, "PATCH", path, 200, json={"name": "pager"})
    assert renamed["name"] == "pager"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"type": "carrier-pigeon"}, "type", ("carrier-pigeon", "loopback")),
        ({"config": {"url": "ftp://127.0.0.1/x"}}, "config.url", ("127.0.0.1",)),
        ({"config": {}}, "config.url", ("missing",)),
        ({"config": {"url": "http://127.0.0.1/", "bogus": 1}}, "config.bogus", ("unknown",)),
        ({"config": {"url": "http://127.0.0.1/", "room": 5}}, "config.room", ("string",)),
        ({"config": "http://127.0.0.1/"}, "config", ("object",)),
        ({"config": ["http://127.0.0.1/"]}, "config", ("object",)),
        ({"name": ""}, "name", ("empty",)),
        ({"enabled": "yes"}, "enabled", ("boolean",)),
    ],
)
def test_bad_channels_are_422_naming_the_field(
    team: Team, body: dict[str, Any], field: str, words: tuple[str, ...]
) -> None:
    full = {"name": unique("ch"), "type": "loopback", "config": {"url": "http://127.0.0.1/"}}
    error = team.error(team.alice, "POST", CHANNELS, 422, json={**full, **body})
    assert error["field"] == field, error
    for word in words:
        assert word in error["message"], error


def test_bad_updates_are_422_and_change_nothing(team: Team, receiver: Receiver) -> None:
    channel = create(team, team.alice, {"url": receiver.url})
    path = f"{CHANNELS}/{channel['id']}"
    before = team.json(team.alice, "GET", path, 200)
    for body, field in (
        ({"config": {"url": "http://example.com/"}}, "config.url"),
        ({"config": None}, "config"),
        ({"type": "loopback"}, "type"),
        ({"name": None}, "name"),
    ):
        assert team.error(team.alice, "PATCH", path, 422, json=body)["field"] == field
    assert team.json(team.alice, "GET", path, 200) == before


def test_names_are_unique_per_owner(team: Team, receiver: Receiver) -> None:
    name = unique("ch")
    config = {"url": receiver.url}
    body = {"name": name, "type": "loopback", "config": config}
    team.call(team.alice, "POST", CHANNELS, 201, json=body)
    assert team.error(team.alice, "POST", CHANNELS, 409, json=body)["code"] == "conflict"
    team.call(team.bob, "POST", CHANNELS, 201, json=body)


def test_other_users_channels_are_not_found(team: Team, receiver: Receiver) -> None:
    channel = create(team, team.alice, {"url": receiver.url})
    path = f"{CHANNELS}/{channel['id']}"
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"name": "mine"}),
        ("DELETE", "", None),
        ("POST", "/test", None),
    ):
        kwargs = {} if body is None else {"json": body}
        assert team.error(team.bob, method, path + suffix, 404, **kwargs)["code"] == "not_found"
    assert receiver.messages() == []
    listed = team.json(team.bob, "GET", CHANNELS, 200)["items"]
    assert channel["id"] not in {c["id"] for c in listed}
    assert channel["id"] in {c["id"] for c in team.json(team.admin, "GET", CHANNELS, 200)["items"]}
    team.call(team.alice, "DELETE", path, 204)
    team.call(team.alice, "GET", path, 404)
    team.call(team.alice, "POST", f"{path}/test", 404)


@attrs.frozen
class MailChannel:
    host: str = attrs.field(metadata={"destination": True})
    password: str = attrs.field(default="", metadata={"secret": True})
    api: str = "https://mail.example.com/v1"
    subject: str = "alert"


def test_destinations_are_the_marked_fields_and_those_holding_urls() -> None:
    secrets = frozenset({"password"})
    stored = {"host": "smtp.example.com", "password": "pw", "api": "https://a/", "subject": "s"}
    assert destination_fields(MailChannel, secrets, stored) == ["host", "api"]
    # A URL where there was none moves the secrets as well.
    assert destination_fields(MailChannel, secrets, {"subject": "x"}, {"subject": "http://x/"}) == [
        "host",
        "subject",
    ]


def test_kept_secrets_are_the_masked_or_left_out_ones_with_a_stored_value() -> None:
    stored = {"token": "t", "headers": {"a": "1", "b": "2"}, "empty": ""}
    names = ["token", "headers", "empty"]
    assert kept_secrets({}, stored, names) == ["token", "headers"]
    assert kept_secrets({"token": MASK, "headers": {"a": MASK, "b": "new"}}, stored, names) == [
        "token",
        "headers.a",
    ]
    assert kept_secrets({"token": "new", "headers": {}, "empty": MASK}, stored, names) == []
