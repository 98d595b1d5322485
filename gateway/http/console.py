"""The web console's files (``gateway/console/``), public: the page holds no data, and
everything it shows it fetches with the key its user signs in with.

Every answer carries a strict Content-Security-Policy: scripts, styles and connections come
from this server only, with no inline script or style, so a record value that holds markup
can never run even if it were written into the page; the console also writes user data as
text only. Files are revalidated on each load (``no-cache`` with an entity tag), so an
upgraded server is never shown with an old module.
"""

from __future__ import annotations

from aiohttp import web

from gateway.console.assets import ASSETS, INDEX, Asset

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def console_page(request: web.Request) -> web.Response:
    return _answer(request, ASSETS[INDEX])


async def console_asset(request: web.Request) -> web.Response:
    asset = ASSETS.get(request.match_info["asset"])
    if asset is None:
        raise web.HTTPNotFound(text="no such file in the console")
    return _answer(request, asset)


def _answer(request: web.Request, asset: Asset) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = asset.media_type
    return web.Response(body=asset.body, headers=headers)
