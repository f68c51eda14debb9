"""Ingest over real HTTP: the per-machine series limit and the limits on names and labels."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lunasentri_core.model import MAX_LABEL_NAME, MAX_LABEL_VALUE, MAX_LABELS, MAX_METRIC_NAME

from .conftest import MakeServer
from .test_ingest import Shared, at, error_of, latest, post, register, sample, shared_server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from shared_server(tmp_path_factory)


def disks(*mounts: int, minutes_ago: float = 1) -> dict[str, Any]:
    entries = [{"labels": {"mount": f"/m{i}"}, "value": float(i)} for i in mounts]
    return {"timestamp": at(minutes_ago).isoformat(), "metrics": {"disk.used": entries}}


def test_a_batch_past_the_series_limit_gets_422_and_stores_nothing(
    make_server: MakeServer,
) -> None:
    server = make_server(storage={"max_series_per_machine": 3})
    admin = server.login()
    machine_id, key = register(server, admin, "web-1")
    _, other_key = register(server, admin, "web-2")
    assert post(server, key, {"samples": [disks(1, 2)]}).status_code == 200

    refused = post(server, key, {"samples": [disks(1, 2, minutes_ago=0.5), disks(3, 4)]})

    assert refused.status_code == 422, refused.text
    error = error_of(refused)
    assert error["code"] == "too_many_series"
    assert error["field"] == "samples"
    assert "limit of 3 series" in error["message"]
    assert "storage.max_series_per_machine" in error["message"]
    stored = latest(server, admin, machine_id)
    assert len(stored) == 2
    assert set(stored.values()) == {1.0, 2.0}, "points of a refused batch were stored"
    # At the limit: a batch of existing series is taken, other machines are not held back.
    assert post(server, key, {"samples": [disks(3, minutes_ago=0.2)]}).status_code == 200
    assert post(server, key, {"samples": [disks(1, 2, 3, minutes_ago=0.1)]}).status_code == 200
    assert post(server, other_key, {"samples": [disks(1, 2, 3)]}).status_code == 200


LONG_METRIC = "a." + "b" * MAX_METRIC_NAME
MANY_LABELS = {f"l{i}": "v" for i in range(MAX_LABELS + 1)}


@pytest.mark.parametrize(
    ("metrics", "field", "words"),
    [
        ({LONG_METRIC: 1.0}, f"samples[1].metrics.{LONG_METRIC}", str(MAX_METRIC_NAME)),
        (
            {"d.u": [{"labels": {"l" * (MAX_LABEL_NAME + 1): "v"}, "value": 1}]},
            "samples[1].metrics.d.u",
            str(MAX_LABEL_NAME),
        ),
        (
            {"d.u": [{"labels": {"mount": "x" * (MAX_LABEL_VALUE + 1)}, "value": 1}]},
            "samples[1].metrics.d.u",
            str(MAX_LABEL_VALUE),
        ),
        (
            {"d.u": [{"labels": MANY_LABELS, "value": 1}]},
            "samples[1].metrics.d.u",
            str(MAX_LABELS),
        ),
    ],
)
def test_names_and_labels_past_their_limits_get_422(
    shared: Shared, metrics: dict[str, Any], field: str, words: str
) -> None:
    body = {
        "samples": [sample(at(1), z__z=1.0), {"timestamp": at(1).isoformat(), "metrics": metrics}]
    }
    body["samples"][1]["timestamp"] = at(0.5).isoformat()

    response = post(shared.server, shared.key, body)

    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"].startswith(field), error
    assert words in error["message"]
    assert latest(shared.server, shared.admin, shared.machine_id) == {}


def test_names_and_labels_at_their_limits_are_taken(shared: Shared) -> None:
    labels = {f"l{i}": "v" * MAX_LABEL_VALUE for i in range(MAX_LABELS - 1)}
    labels["n" * MAX_LABEL_NAME] = "v"
    metric = "a." + "b" * (MAX_METRIC_NAME - 2)
    body = {
        "samples": [
            {"timestamp": at(1).isoformat(), "metrics": {metric: [{"labels": labels, "value": 1}]}}
        ]
    }
    response = post(shared.server, shared.key, body)
    assert response.status_code == 200, response.text
