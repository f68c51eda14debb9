"""Routes: a machine's latest values, its history, and its live stream of samples."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import attrs
import orjson
from anyio.abc import TaskGroup
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse

from lunasentri_core.codec import encode_json, parse_datetime, parse_duration
from lunasentri_core.components import Credentials
from lunasentri_core.errors import NotFoundError
from lunasentri_core.model import (
    LABEL_NAME,
    METRIC_NAME,
    Aggregation,
    HistoryColumns,
    HistoryQuery,
    Labels,
    SeriesValue,
)
from lunasentri_core.server.api import Api, Auth, Call, Schema, array_of
from lunasentri_core.server.errors import ApiError
from lunasentri_core.services import queries
from lunasentri_core.services.live import Delivery, LiveFeed

api = Api("queries")

KEEPALIVE_SECONDS = 15.0
_NUMERIC = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_RELATIVE = re.compile(r"^-\d+(\.\d+)?(ms|s|m|h|d|w)$")
"""A time before now (``-15m``); a bare ``-15`` stays Unix epoch seconds."""
# A "+" in a query string arrives as a space unless the client encoded it.
_SPACED_OFFSET = re.compile(r" (\d{2}(:?\d{2})?)$")

TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
LABELS: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
SERIES_VALUE = api.schema(
    "SeriesValue",
    {
        "type": "object",
        "required": ["metric", "labels", "timestamp", "value"],
        "additionalProperties": False,
        "properties": {
            "metric": {"type": "string"},
            "labels": LABELS,
            "timestamp": TIMESTAMP,
            "value": {"type": "number"},
        },
    },
)
LATEST = api.schema(
    "LatestValues",
    {
        "type": "object",
        "required": ["machine_id", "items", "derived"],
        "additionalProperties": False,
        "properties": {
            "machine_id": {"type": "string"},
            "items": array_of(SERIES_VALUE),
            "derived": {
                **array_of(SERIES_VALUE),
                "description": "mem.percent, swap.percent and disk.percent (per mount): "
                "used / total * 100 from the latest points, where both exist, the total is "
                "above zero and no series of that name is stored. The timestamp is the later "
                "of the two points'.",
            },
        },
    },
)
HISTORY = api.schema(
    "History",
    {
        "type": "object",
        "required": ["machine_id", "metric", "start", "end", "step", "aggregation", "series"],
        "additionalProperties": False,
        "properties": {
            "machine_id": {"type": "string"},
            "metric": {
                "type": "string",
                "description": "The metric, or the metrics separated by commas, as asked for.",
            },
            "start": TIMESTAMP,
            "end": TIMESTAMP,
            "step": {"type": "number", "exclusiveMinimum": 0, "description": "Seconds."},
            "aggregation": {"enum": [a.value for a in Aggregation]},
            "series": array_of(
                {
                    "type": "object",
                    "required": ["metric", "labels", "resolution", "points"],
                    "additionalProperties": False,
                    "properties": {
                        "metric": {"type": "string"},
                        "labels": LABELS,
                        "resolution": {
                            "enum": ["raw", "1m", "1h"],
                            "description": "Whether raw points or 1-minute or 1-hour rollups "
                            "answered.",
                        },
                        "points": {
                            "type": "array",
                            "description": "One `[timestamp, value]` pair per step that has "
                            "data, oldest first; the timestamp is the start of the step.",
                            "items": {
                                "type": "array",
                                # Not prefixItems: schemathesis 4 rewrites it to the
                                # tuple form of "items", which OpenAPI 3.1 refuses.
                                "items": {"anyOf": [TIMESTAMP, {"type": "number"}]},
                                "minItems": 2,
                                "maxItems": 2,
                            },
                        },
                    },
                }
            ),
        },
    },
)
EVENT_STREAM: Schema = {
    "type": "string",
    "contentMediaType": "text/event-stream",
    "description": "Server-Sent Events. `event: sample` carries one newly stored sample of "
    "the machine as `data` (the Sample JSON of the ingest API); `event: dropped` with data "
    '`{"count": n}` says this client read too slowly and missed its n oldest samples; a '
    "comment line (`: ...`) arrives first once the subscription is live and then every "
    f"{KEEPALIVE_SECONDS:g} s as a keepalive. The stream ends when the server shuts down, "
    "and within `server.stream_recheck` (2 s by default) of its credential ending (logout, "
    "expiry, password change, deleted user: the credential is checked again against "
    "storage) or of the machine no longer being visible to the caller.",
}

_METRIC_PARAM: Schema = {"type": "string", "pattern": METRIC_NAME.pattern}
MAX_HISTORY_METRICS = 16
"""Metrics one history call may ask for (a machine page's charts ask for nine at once)."""
_ONE_METRIC = METRIC_NAME.pattern.removeprefix("^").removesuffix("$")
_METRICS_PARAM: Schema = {
    "type": "string",
    "pattern": f"^{_ONE_METRIC}(,{_ONE_METRIC}){{0,{MAX_HISTORY_METRICS - 1}}}$",
}
_TIME_PARAM: Schema = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "number"},
        {"type": "string", "pattern": _RELATIVE.pattern},
    ],
    "description": "ISO 8601 with a timezone (encode '+' as %2B), Unix epoch seconds, or "
    "a time before the server's now: -30s, -15m, -6h, -7d (a relative start is rounded "
    "down to a whole step).",
}


async def start(app: Starlette, services: TaskGroup) -> None:
    feed = LiveFeed()
    feed.attach(app.state.hub)
    app.state.live = feed
    services.start_soon(_close_at_shutdown, feed)


async def _close_at_shutdown(feed: LiveFeed) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        feed.close()
        feed.detach()


# --------------------------------------------------------------------------- latest


@api.get(
    "/api/v1/machines/{machine_id}/latest",
    auth=Auth.USER,
    summary="The newest value of every series of a machine, with derived percentages",
    query={
        "metric": {
            **_METRIC_PARAM,
            "description": "Only this metric (stored or derived, e.g. disk.percent).",
        }
    },
    responses={200: LATEST},
)
async def latest_values(call: Call) -> object:
    """The newest value of each series of the machine, and derived percentages."""
    _only(call, {"metric"})
    metric = call.query("metric")
    if metric is not None:
        metric = _metric(metric, "metric")
    found = await queries.latest(call.hub, call.path("machine_id"), call.owner_scope, metric)
    return {
        "machine_id": found.machine_id,
        "items": [_value_json(v) for v in found.items],
        "derived": [_value_json(v) for v in found.derived],
    }


def _value_json(value: SeriesValue) -> dict[str, Any]:
    return {
        "metric": value.series.metric,
        "labels": dict(value.series.labels),
        "timestamp": value.timestamp.isoformat(),
        "value": value.value,
    }


# --------------------------------------------------------------------------- history


@api.get(
    "/api/v1/machines/{machine_id}/history",
    auth=Auth.USER,
    summary="Metrics of a machine over a time range, downsampled to a step",
    query={
        "metric": {
            **_METRICS_PARAM,
            "x-required": True,
            "description": "Stored or derived; several (at most "
            f"{MAX_HISTORY_METRICS}) separated by commas, answered in one call over the same "
            "range and step.",
        },
        "start": {**_TIME_PARAM, "description": "Default: an hour before end."},
        "end": {**_TIME_PARAM, "description": "Default: now."},
        "step": {
            "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}],
            "description": "Seconds, or a duration such as 30s, 5m, 1h. Default: the smallest "
            f"round step giving at most {queries.TARGET_POINTS} steps; at most "
            f"{queries.MAX_STEPS} steps.",
        },
        "agg": {"enum": [a.value for a in Aggregation], "description": "Default: avg."},
        "labels": {
            "type": "string",
            "description": "Only series with these labels: name:value pairs separated by "
            "commas, e.g. mount:/,device:sda1.",
        },
        "exact": {
            "type": "boolean",
            "description": "true: only the series whose labels are exactly `labels` (without "
            "`labels`: each metric's unlabelled series, e.g. the CPU as a whole rather than "
            "per core). Default: false.",
        },
    },
    responses={200: HISTORY},
)
async def history(call: Call) -> object:
    """Each metric's series over `[start, end)`, one point per step that has data;
    several metrics are answered in the order asked for.

    Derived percentages (mem.percent, swap.percent, disk.percent) are answered
    from their used and total series: each step's aggregated used over the same
    step's aggregated total, times 100.
    """
    _only(call, {"metric", "start", "end", "step", "agg", "labels", "exact"})
    metrics = _metrics(call.require_query("metric"))
    query = _history_query(call, metrics[0])
    asked = [attrs.evolve(query, metric=metric) for metric in metrics]
    found = await queries.history_columns(call.hub, asked, call.owner_scope)
    body = {
        "machine_id": query.machine_id,
        "metric": ",".join(metrics),
        "start": query.start.isoformat(),
        "end": query.end.isoformat(),
        "step": query.step.total_seconds(),
        "aggregation": query.aggregation.value,
        "series": list(map(_series_json, found, _step_starts(found))),
    }
    # orjson writes the step starts (UTC datetimes, as isoformat() spells them)
    # and the values straight from the columns: no object or string per step here.
    return Response(orjson.dumps(body), media_type="application/json")


def _metrics(value: str) -> list[str]:
    names = [_metric(name, "metric") for name in value.split(",")]
    if len(names) > MAX_HISTORY_METRICS:
        raise _invalid("metric", f"{len(names)} metrics; at most {MAX_HISTORY_METRICS}")
    if len(set(names)) != len(names):
        raise _invalid("metric", "a metric is given twice")
    return names


def _exact(call: Call) -> bool:
    value = call.query("exact")
    if value in (None, "false"):
        return False
    if value == "true":
        return True
    raise _invalid("exact", "expected true or false")


def _history_query(call: Call, metric: str) -> HistoryQuery:
    given_end, given_start = _time(call, "end"), _time(call, "start")
    end = given_end or call.hub.clock()
    try:
        start = given_start or end - queries.DEFAULT_RANGE
    except OverflowError:
        raise _invalid("end", "too early for the default range of an hour") from None
    if end <= start:
        raise _invalid("end" if given_end else "start", "end must be after start")
    step = _step(call) or queries.auto_step(start, end)
    if given_start is None or _RELATIVE.match(call.query("start") or ""):
        # Round steps for "the last ..." (as for the default range): the same
        # query repeated a moment later gives the same buckets.
        start = queries.align(start, step)
    if (end - start) / step > queries.MAX_STEPS:
        steps = (end - start) / step
        raise _invalid("step", f"{steps:.0f} steps; at most {queries.MAX_STEPS}: use a larger one")
    return HistoryQuery(
        machine_id=call.path("machine_id"),
        metric=metric,
        start=start,
        end=end,
        step=step,
        aggregation=_aggregation(call),
        labels=_labels(call),
        exact=_exact(call),
    )


def _series_json(series: HistoryColumns, starts: Iterable[datetime]) -> dict[str, Any]:
    return {
        "metric": series.series.metric,
        "labels": dict(series.series.labels),
        "resolution": series.resolution.value,
        "points": list(zip(starts, series.values, strict=True)),
    }


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _step_starts(found: Sequence[HistoryColumns]) -> list[Iterable[datetime]]:
    """Each series' step starts as datetimes (:meth:`HistoryColumns.datetimes`); the
    series of one call share their steps, so each distinct start is made once."""
    if len(found) < 2:
        return [series.datetimes() for series in found]
    stamps = set().union(*(series.timestamps for series in found))
    made = dict(zip(stamps, map(_EPOCH.__add__, map(_MICROSECOND.__mul__, stamps)), strict=True))
    return [map(made.__getitem__, series.timestamps) for series in found]


# --------------------------------------------------------------------------- live stream


@api.get(
    "/api/v1/machines/{machine_id}/stream",
    auth=Auth.USER,
    summary="A machine's new samples as they are stored (Server-Sent Events)",
    responses={200: EVENT_STREAM},
)
async def stream(call: Call) -> object:
    """Each sample of the machine, pushed as soon as it is stored.

    Wait for the first comment line before relying on the stream: from then on
    no sample is missed (unless the client falls behind by more than the
    server's per-client queue, when `event: dropped` says how many).
    """
    _only(call, set())
    machine = await call.hub.get_machine(call.path("machine_id"), call.owner_scope)
    feed: LiveFeed = call.request.app.state.live
    recheck = call.settings.stream_recheck.total_seconds()
    return StreamingResponse(
        _events(feed, machine.id, _Watch(call), recheck),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


class _Watch:
    """Whether a stream's caller may still watch its machine.

    The request's credentials are authenticated again, against storage, so a
    logout, expiry, password change or user deletion made by any server process
    sharing it is seen; the machine is looked up again in the principal's scope.
    """

    def __init__(self, call: Call) -> None:
        request = call.request
        self._hub = call.hub
        self._user_id = call.user.id
        self._machine_id = call.path("machine_id")
        self._credentials = Credentials(
            headers={k.lower(): v for k, v in request.headers.items()},
            cookies=dict(request.cookies),
            client=call.client,
        )

    async def allowed(self) -> bool:
        principal = await self._hub.authenticate(self._credentials)
        if principal is None or principal.kind != "user" or principal.id != self._user_id:
            return False
        scope = None if principal.is_admin else principal.id
        try:
            await self._hub.get_machine(self._machine_id, scope)
        except NotFoundError:
            return False
        return True


async def _events(
    feed: LiveFeed, machine_id: str, watch: _Watch, recheck: float
) -> AsyncIterator[str]:
    async with feed.watch(machine_id) as subscription:
        yield "retry: 3000\n: subscribed\n\n"
        next_check = next_keepalive = anyio.current_time()
        next_check += recheck
        next_keepalive += KEEPALIVE_SECONDS
        while True:
            wait = min(next_check, next_keepalive) - anyio.current_time()
            delivery = await subscription.receive(max(0.0, wait))
            if delivery is None:
                return
            now = anyio.current_time()
            if now >= next_check:
                if not await watch.allowed():
                    return  # the credential ended: nothing more for this caller
                next_check = anyio.current_time() + recheck
            if delivery.samples or delivery.dropped:
                next_keepalive = now + KEEPALIVE_SECONDS
                yield _samples_event(delivery)
            elif now >= next_keepalive:
                next_keepalive = now + KEEPALIVE_SECONDS
                yield ": keepalive\n\n"


def _samples_event(delivery: Delivery) -> str:
    parts = []
    if delivery.dropped:
        parts.append(f"event: dropped\ndata: {json.dumps({'count': delivery.dropped})}\n\n")
    parts.extend(f"event: sample\ndata: {encode_json(s)}\n\n" for s in delivery.samples)
    return "".join(parts)


# --------------------------------------------------------------------------- parameters


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid", f"query parameter {field!r}: {message}", field)


def _only(call: Call, allowed: Collection[str]) -> None:
    params = call.request.query_params
    for name in params:
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise _invalid(name, f"unknown parameter (known: {known})")
        if len(params.getlist(name)) > 1:
            raise _invalid(name, "given more than once")


def _metric(value: str, field: str) -> str:
    if not METRIC_NAME.match(value):
        raise _invalid(field, f"{value!r} is not a metric name (e.g. cpu.percent)")
    return value


def _time(call: Call, name: str) -> datetime | None:
    value = call.query(name)
    if value is None:
        return None
    if _RELATIVE.match(value):
        try:
            return call.hub.clock() - parse_duration(value[1:])
        except (TypeError, ValueError, OverflowError):
            raise _invalid(name, f"{value!r} reaches back too far") from None
    raw: object = float(value) if _NUMERIC.match(value) else _SPACED_OFFSET.sub(r"+\1", value)
    try:
        return parse_datetime(raw)
    except (TypeError, ValueError) as error:
        raise _invalid(name, str(error)) from None


def _step(call: Call) -> timedelta | None:
    value = call.query("step")
    if value is None:
        return None
    raw: object = float(value) if _NUMERIC.match(value) else value
    try:
        step = parse_duration(raw)
    except (TypeError, ValueError) as error:
        raise _invalid("step", str(error)) from None
    if step <= timedelta(0):
        raise _invalid("step", "must be positive")
    return step


def _aggregation(call: Call) -> Aggregation:
    value = call.query("agg") or Aggregation.AVG.value
    try:
        return Aggregation(value)
    except ValueError:
        choices = ", ".join(a.value for a in Aggregation)
        raise _invalid("agg", f"{value!r} is not one of {choices}") from None


def _labels(call: Call) -> Labels | None:
    value = call.query("labels")
    if value is None:
        return None
    pairs = []
    for item in value.split(","):
        name, sep, label_value = item.partition(":")
        if not sep or not LABEL_NAME.match(name):
            raise _invalid("labels", f"{item!r} is not name:value (e.g. mount:/)")
        pairs.append((name, label_value))
    if len({name for name, _ in pairs}) != len(pairs):
        raise _invalid("labels", "a label is given twice")
    return tuple(sorted(pairs))
