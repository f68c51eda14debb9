"""JSON answers: orjson's bytes where it can, the standard encoder's where it can't."""

from __future__ import annotations

import json
import math

import pytest
from starlette.responses import JSONResponse

from lunasentri_core.server.jsonanswer import JsonAnswer


@pytest.mark.parametrize(
    "content",
    [
        {"name": "vm-1", "labels": {"rack": "a"}, "value": 12.5, "ok": True, "none": None},
        [1, -2, 3.25, "é ü 漢", {"nested": [[], {}]}, -0.0],
    ],
)
def test_the_bytes_starlette_writes(content: object) -> None:
    assert JsonAnswer(content).body == JSONResponse(content).body


def test_extreme_floats_read_back_the_same() -> None:
    # Only the spelling may differ (orjson writes 1e308 where Python writes 1e+308).
    content = {"tiny": 5e-324, "huge": 1.7976931348623157e308, "third": 1 / 3}
    assert json.loads(JsonAnswer(content).body) == content


def test_keys_that_are_not_strings_are_written_as_strings() -> None:
    assert json.loads(JsonAnswer({1: "a", None: "b"}).body) == {"1": "a", "null": "b"}


def test_what_orjson_refuses_goes_to_the_standard_encoder() -> None:
    big = 2**70  # beyond orjson's 64 bits
    assert json.loads(JsonAnswer({"big": big}).body) == {"big": big}


def test_a_lone_surrogate_still_fails() -> None:
    with pytest.raises(UnicodeEncodeError):
        JsonAnswer({"text": "\ud800"})


def test_a_float_json_cannot_express_is_null() -> None:
    assert json.loads(JsonAnswer({"a": math.nan, "b": math.inf}).body) == {"a": None, "b": None}
