"""A 401 tells a caller with no credential from one whose credential was refused."""

from __future__ import annotations

import pytest

from .conftest import LiveServer


@pytest.mark.parametrize(
    ("method", "path", "missing", "refused"),
    [
        ("POST", "/api/v1/ingest", "a machine API key is required", "the API key was refused"),
        ("GET", "/api/v1/machines", "log in first", "the credentials were refused"),
    ],
)
@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_a_refused_credential_is_named_as_such(
    server: LiveServer, method: str, path: str, missing: str, refused: str, header: str
) -> None:
    value = "Bearer lsk_not_a_key" if header == "authorization" else "lsk_not_a_key"
    with server.client() as client:
        without = client.request(method, path, json={"samples": []})
        wrong = client.request(method, path, json={"samples": []}, headers={header: value})

    assert without.status_code == wrong.status_code == 401
    assert without.json()["error"]["message"] == missing
    assert wrong.json()["error"]["message"].startswith(refused)
