"""The ingest body's fast path (orjson + the codec's fast samples) agrees with the general one.

``read_batch`` must give exactly what ``parse_json`` gives: the same batch for
good bodies, the same error (status, code, message, field errors) for bad ones,
including where orjson and the standard parser disagree.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from lunasentri_core.errors import ValidationError
from lunasentri_core.server.api import parse_json
from lunasentri_core.server.errors import ApiError
from lunasentri_core.server.routes.ingest import read_batch
from lunasentri_core.services.ingest import IngestBatch


def outcome(read: object, raw: bytes) -> object:
    try:
        batch = read(raw)  # type: ignore[operator]
    except ApiError as error:
        return ("api", error.status, error.code, error.message, error.field)
    except ValidationError as error:
        return ("invalid", [str(e) for e in error.errors])
    assert isinstance(batch, IngestBatch)
    types = [type(r.value) for s in batch.samples for r in s.readings]
    return ("ok", batch, types)


def assert_same(raw: bytes) -> None:
    assert outcome(read_batch, raw) == outcome(lambda r: parse_json(r, IngestBatch), raw)


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),  # past 64 bits orjson makes floats
    st.just(10**400),
)
labels = st.one_of(
    st.dictionaries(st.sampled_from(["mount", "nic"]), st.sampled_from(["/", "eth0"])),
    st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=2), st.integers())),
)
entries = st.one_of(
    st.fixed_dictionaries({"value": numbers, "labels": labels}),
    st.fixed_dictionaries({"value": numbers}),
    st.fixed_dictionaries({"value": st.none(), "extra": st.booleans()}),
)
metrics = st.dictionaries(
    st.one_of(st.sampled_from(["cpu.percent", "disk.used", "mem.total"]), st.text(max_size=4)),
    st.one_of(numbers, st.lists(entries, max_size=3), st.text(max_size=2), st.booleans()),
    max_size=4,
)
stamps = st.one_of(
    st.sampled_from([0, 1_700_000_000.25, "2026-11-23T16:00:00+02:00", "2026-11-23T16:00:00"]),
    numbers,
    st.none(),
)
samples = st.one_of(
    st.fixed_dictionaries({"timestamp": stamps, "metrics": metrics}),
    st.fixed_dictionaries({"timestamp": stamps}),
    st.fixed_dictionaries({"timestamp": stamps, "metrics": metrics, "x": st.integers()}),
)
bodies = st.one_of(
    st.fixed_dictionaries({"samples": st.lists(samples, max_size=3)}),
    st.fixed_dictionaries({"samples": st.lists(samples, max_size=2), "extra": st.integers()}),
    st.lists(samples, max_size=1),
)


@given(bodies)
def test_fast_and_general_paths_agree_on_any_body(body: object) -> None:
    assert_same(json.dumps(body).encode())


def test_bodies_only_the_standard_parser_reads_are_decoded_by_it() -> None:
    good = b'{"samples":[{"timestamp":0,"metrics":{"cpu.percent":1}}]}'
    assert outcome(read_batch, good)[0] == "ok"
    for raw in [
        b"\xef\xbb\xbf" + good,  # a byte order mark
        good.replace(b'"cpu.percent"', b'"cpu.percent\\ud800"'),  # a lone surrogate
        good.replace(b":1}", b":123456789012345678901234567890}"),  # beyond 64 bits
        good.replace(b":1}", b":1e400}"),  # infinite once parsed
        good.replace(b'"timestamp":0', b'"timestamp":123456789012345678901234567890'),
        good.replace(b":1}", b":NaN}"),
        good[:-3],  # truncated
        b"",
        '{"samples": []}'.encode("utf-16"),
    ]:
        assert_same(raw)


def test_a_big_integer_value_is_the_same_float_on_both_paths() -> None:
    raw = b'{"samples":[{"timestamp":0,"metrics":{"net.rx_bytes":18446744073709551617}}]}'
    kind, batch, _ = outcome(read_batch, raw)  # type: ignore[misc]
    assert kind == "ok"
    assert batch.samples[0].readings[0].value == float(18446744073709551617)
    assert_same(raw)
