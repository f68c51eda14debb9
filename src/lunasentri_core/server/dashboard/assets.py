"""The dashboard's static files (its own scripts and styles, vendored libraries).

Each is read once, at import, and served from memory under a URL that carries
a digest of its content: a page names the exact bytes it was written for, so a
browser may keep them for a year without asking again (``immutable``), and an
upgrade that changes a file changes its URL. A gzip copy is made once and sent
to clients that accept it.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import attrs
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

STATIC_DIR = Path(__file__).with_name("static")
DIGEST_LENGTH = 12
IMMUTABLE = "public, max-age=31536000, immutable"
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    "": "text/plain; charset=utf-8",  # LICENSE
}
GZIP_FROM = 512
"""Smaller files are sent as they are: gzip would save less than its headers cost."""


@attrs.frozen
class Asset:
    body: bytes
    gzipped: bytes | None
    digest: str
    media_type: str


def _load(root: Path) -> dict[str, Asset]:
    assets = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix not in TYPES:
            continue
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:DIGEST_LENGTH]
        # mtime=0: the same bytes on every start, whatever the file's date.
        gzipped = gzip.compress(body, 9, mtime=0) if len(body) >= GZIP_FROM else None
        name = path.relative_to(root).as_posix()
        assets[name] = Asset(body, gzipped, digest, TYPES[path.suffix])
    return assets


ASSETS = _load(STATIC_DIR)


def asset_path(name: str) -> str:
    """The path (after the dashboard's prefix) that serves ``name``'s current content."""
    return f"/static/{ASSETS[name].digest}/{name}"


async def serve_asset(request: Request) -> Response:
    """``GET /static/{digest}/{name}``: the file, if ``digest`` is its current one."""
    asset = ASSETS.get(request.path_params["name"])
    if asset is None or asset.digest != request.path_params["digest"]:
        # An old page after an upgrade: its files are gone; reloading it names the new ones.
        return PlainTextResponse("no such file", 404, headers={"cache-control": "no-store"})
    headers = {"cache-control": IMMUTABLE, "vary": "accept-encoding"}
    body = asset.body
    if asset.gzipped is not None and _accepts_gzip(request.headers.get("accept-encoding", "")):
        body = asset.gzipped
        headers["content-encoding"] = "gzip"
    return Response(body, media_type=asset.media_type, headers=headers)


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False
