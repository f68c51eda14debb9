"""Routes: ingest (an agent posts its samples)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import orjson
from anyio.abc import TaskGroup
from starlette.applications import Starlette

from lunasentri_core.codec import fast_samples
from lunasentri_core.errors import SeriesLimitError
from lunasentri_core.model import LABEL_NAME, MAX_LABEL_VALUE, METRIC_NAME
from lunasentri_core.server.api import Api, Auth, Call, Schema, parse_json, ref
from lunasentri_core.server.errors import ApiError
from lunasentri_core.services.ingest import (
    BatchTooLargeError,
    IngestBatch,
    Ingestor,
    RateLimitedError,
)
from lunasentri_core.services.writer import BatchWriter, WriterClosedError

api = Api("ingest")

_NUMBER: Schema = {"type": "number", "description": "A finite number (no NaN or infinity)."}
_LABELS: Schema = {
    "type": "object",
    "propertyNames": {"pattern": LABEL_NAME.pattern},
    "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_VALUE},
}
SAMPLE = api.schema(
    "Sample",
    {
        "type": "object",
        "description": "Everything measured on one machine at one instant. A plain reading "
        "is `name: value`; a metric with labelled series is a list of "
        '`{"labels": {...}, "value": v}`.',
        "required": ["timestamp", "metrics"],
        "additionalProperties": False,
        "properties": {
            "timestamp": {
                "anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
                "description": "ISO 8601 with a timezone, or seconds since the Unix epoch.",
            },
            "metrics": {
                "type": "object",
                "propertyNames": {"pattern": METRIC_NAME.pattern},
                "additionalProperties": {
                    "anyOf": [
                        _NUMBER,
                        {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["value"],
                                "additionalProperties": False,
                                "properties": {"value": _NUMBER, "labels": _LABELS},
                            },
                        },
                    ]
                },
            },
        },
    },
)
INGEST_REQUEST: Schema = {
    "type": "object",
    "required": ["samples"],
    "additionalProperties": False,
    "properties": {"samples": {"type": "array", "minItems": 1, "items": SAMPLE}},
}
INGEST_RESULT = api.schema(
    "IngestResult",
    {
        "type": "object",
        "required": ["accepted"],
        "additionalProperties": False,
        "properties": {
            "accepted": {
                "type": "integer",
                "minimum": 0,
                "description": "Readings in the batch, all durably stored.",
            }
        },
    },
)


async def start(app: Starlette, services: TaskGroup) -> None:
    app.state.ingestor = Ingestor(app.state.hub, app.state.settings)
    writer: BatchWriter = app.state.hub.writer
    observe = app.state.metrics.write_batch_points.observe
    writer.transaction_listeners.append(observe)
    services.start_soon(_stop_observing, writer, observe)


async def _stop_observing(writer: BatchWriter, observe: Callable[[int], object]) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        if observe in writer.transaction_listeners:
            writer.transaction_listeners.remove(observe)


@api.post(
    "/api/v1/ingest",
    auth=Auth.MACHINE,
    summary="Store a batch of samples of the calling machine",
    request=INGEST_REQUEST,
    responses={
        200: INGEST_RESULT,
        413: ref("Error"),
        415: ref("Error"),
        422: ref("Error"),
        429: ref("Error"),
        503: ref("Error"),
    },
)
async def ingest(call: Call) -> object:
    """Store samples of the machine whose API key is presented.

    The body may be gzipped (`Content-Encoding: gzip`). The answer comes after
    the samples are durably committed; a retried batch is stored once (the
    first value of a series at a timestamp wins), so an agent may retry
    freely. Samples without readings only mark the machine as seen.

    Refused whole, with nothing stored: an empty list of samples, timestamps
    more than `server.max_clock_skew` ahead or `server.max_sample_age` behind
    the server's clock (422, naming `samples[i].timestamp`); more readings than
    `server.max_batch_points` (413, code `too_many_points`); a machine over its
    rate (`server.ingest_rate` points per second, bursts up to
    `server.ingest_burst`): 429 with `Retry-After` in seconds; a batch that would
    give the machine more than `storage.max_series_per_machine` series (422, code
    `too_many_series`); metric names, label names and values, or label counts past
    their limits (422, naming the field).
    """
    ingestor: Ingestor = call.request.app.state.ingestor
    machine_id = call.machine_id
    try:
        ingestor.admit(machine_id)
        batch = read_batch(await call.body())
        points = await ingestor.ingest(machine_id, batch.samples)
    except RateLimitedError as error:
        headers = {"Retry-After": error.retry_after_header}
        raise ApiError(429, "rate_limited", str(error), headers=headers) from None
    except BatchTooLargeError as error:
        raise ApiError(413, "too_many_points", str(error), "samples") from None
    except SeriesLimitError as error:
        raise ApiError(422, "too_many_series", str(error), "samples") from None
    except WriterClosedError:
        message = "the server is shutting down; retry shortly"
        raise ApiError(503, "unavailable", message, headers={"Retry-After": "1"}) from None
    call.request.app.state.metrics.ingested_points.inc(points)
    return {"accepted": points}


def read_batch(raw: bytes) -> IngestBatch:
    """The body as a batch: a well-formed one on the fast path, anything else on the
    general path (:func:`parse_json`), which names what is wrong.

    The fast path parses with orjson, which takes about half the time of the
    standard parser, and decodes with :func:`~lunasentri_core.codec.fast_samples`.
    Both paths give the same batch: where orjson differs from the standard
    parser (integers beyond 64 bits become floats, which only ever end up as
    reading values, converted to the same float, or as out-of-range timestamps,
    which fail the fast path) or refuses what it accepts (a byte order mark,
    lone surrogates), the general path decides.
    """
    try:
        samples = fast_samples(orjson.loads(raw))
    except orjson.JSONDecodeError:
        samples = None
    if samples is None:
        return parse_json(raw, IngestBatch)
    return IngestBatch(samples)
