"""The request body parser's refusals of hostile JSON (the HTTP sweep is in test_bad_input)."""

from __future__ import annotations

import json

import pytest

from lunasentri_core.errors import ValidationError
from lunasentri_core.server.errors import ApiError
from lunasentri_core.server.jsonbody import MAX_DEPTH, load_json


def mixed(depth: int) -> str:
    """Objects and arrays alternating, with keys that need care: depth levels in all."""
    text = "1"
    for level in reversed(range(depth)):
        if level % 2:
            text = f'[0, "x]\\"", {text}]'
        else:
            text = f'{{"k,{level}": "}}", "k\\u00e9{level}": {text}}}'
    return text


def expected_path(depth: int) -> str:
    path = ""
    for level in range(depth):
        path += "[2]" if level % 2 else (".k\u00e9" if path else "k\u00e9") + str(level)
    return path


def test_nesting_up_to_the_limit_is_parsed() -> None:
    assert load_json(mixed(MAX_DEPTH).encode()) == json.loads(mixed(MAX_DEPTH))


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, MAX_DEPTH + 9, 5_000])
def test_deeper_nesting_names_the_first_container_past_the_limit(depth: int) -> None:
    # 5,000 levels stop the standard parser itself: the path is then found from the tokens.
    with pytest.raises(ApiError) as caught:
        load_json(mixed(depth).encode())
    assert (caught.value.status, caught.value.code) == (400, "too_deep")
    assert caught.value.field == expected_path(MAX_DEPTH)


def test_a_lone_surrogate_in_a_key_is_named_by_its_escape() -> None:
    with pytest.raises(ValidationError) as caught:
        load_json(b'{"labels": {"env\\udfff": "prod"}}')
    assert caught.value.first_path == "labels.env\\udfff"
    assert "\\udfff" in str(caught.value)


def test_an_escaped_backslash_before_u_is_not_a_surrogate() -> None:
    assert load_json(b'{"a": "\\\\ud800"}') == {"a": "\\ud800"}


def test_a_surrogate_pair_is_text() -> None:
    assert load_json(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
