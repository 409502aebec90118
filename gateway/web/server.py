"""Serving the console from inside the gateway's event loop (uvicorn, no threads, no signals of
its own: the gateway decides when to stop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn

from .app import WebContext, create_app
from .live import Broadcaster

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):       # the gateway handles SIGINT/SIGTERM itself
        yield


class WebError(Exception):
    """The console cannot start (one line for a person)."""


def listen(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # every reply on a kept-alive connection waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((bind, port))
    except OSError as e:
        sock.close()
        raise WebError(f"web console: cannot listen on {bind}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(ctx: WebContext, sock: socket.socket | None = None) -> None:
    """Serve until cancelled; live updates come from the gateway's hub when there is one."""
    web = ctx.cfg.web
    if ctx.gateway is not None and ctx.broadcaster is None:
        ctx.broadcaster = Broadcaster(ctx.gateway.hub, ctx.tz)
    sock = sock or listen(web.bind, web.port)
    config = uvicorn.Config(create_app(ctx), lifespan="off", access_log=False, log_level="warning",
                            timeout_graceful_shutdown=1, ssl_certfile=web.tls_cert, ssl_keyfile=web.tls_key,
                            proxy_headers=False)
    server = _Server(config)
    live = asyncio.create_task(ctx.broadcaster.run()) if ctx.broadcaster is not None else None
    scheme = "https" if web.tls_cert else "http"
    host, port = sock.getsockname()[:2]
    log.info("web console on %s://%s:%d/", scheme, host, port)
    try:
        await server.serve(sockets=[sock])
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.shutdown(sockets=[sock]), 3)
        raise
    finally:
        if live is not None:
            live.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live
        sock.close()
