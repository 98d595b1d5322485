"""The console's files, read once from the package into memory, each with its media type
and an entity tag, so that serving one is a dictionary lookup."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

# The media types of the files the console has; a file of any other kind is not served.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    # Modules must come as JavaScript, or a browser refuses them under nosniff.
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
INDEX = "index.html"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of ``static/`` by name (the folder is flat: a name is a file)."""
    found: dict[str, Asset] = {}
    for entry in resources.files("gateway.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in MEDIA_TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        found[entry.name] = Asset(body, MEDIA_TYPES[suffix], etag)
    return dict(sorted(found.items()))


ASSETS = load_assets()
