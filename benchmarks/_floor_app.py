"""The framework's floor for an agent request: a bare Starlette endpoint on uvicorn.

``bench_agent_request.py --floor`` runs it in its own process with the settings
``lunasentri serve`` gives uvicorn (one worker, the default loop and HTTP
parser, keep-alive 75 s, no access log) and sends it the same requests as the
real server. It does what any ingest endpoint must do and nothing more:
gunzip and parse the body, hand it to a worker thread (where a blocking
database write would run) and answer ``{"accepted": N}``. No authentication,
validation or storage: what the server costs above this is LunaSentri's own.

    python benchmarks/_floor_app.py PORT
"""

from __future__ import annotations

import gzip
import sys
from typing import Any

import anyio.to_thread
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def _count(body: bytes) -> int:
    """The readings in an ingest body (a metric holds one value or a list of them)."""
    data: Any = orjson.loads(gzip.decompress(body))
    return sum(
        len(value) if isinstance(value, list) else 1
        for sample in data["samples"]
        for value in sample["metrics"].values()
    )


async def ingest(request: Request) -> Response:
    accepted = await anyio.to_thread.run_sync(_count, await request.body())
    return Response(orjson.dumps({"accepted": accepted}), media_type="application/json")


app = Starlette(routes=[Route("/api/v1/ingest", ingest, methods=["POST"])])


if __name__ == "__main__":
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_config=None,
        access_log=False,
        timeout_keep_alive=75,
    )
    uvicorn.Server(config).run()
