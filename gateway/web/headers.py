"""The security headers of every console response.

The pages load their script and stylesheet from /static and have no inline script, style or
event handler, so the Content-Security-Policy can forbid all of those: an injected <script>
or onclick= does not run. No page may be framed (clickjacking an acknowledgement), no response
is sniffed into another type, no other site learns our URLs from the Referer, and nothing but
the static files is kept in a browser's or a proxy's cache (a guard-room PC is shared).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# The monthly report (gateway/billing) is one self-contained file with its own <style>, meant to
# be opened offline too: inline styles, but still no script at all.
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders:
    """ASGI middleware (not BaseHTTPMiddleware: that would buffer the live updates' stream).
    A response that sets a header itself (the report's CSP) keeps its own."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
                if not static:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_headers)
