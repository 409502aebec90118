"""The console's web application (Starlette): login, pages, live updates, machine endpoints.

Every page and API needs a logged-in user whose role has the page's permission (auth.py);
only /healthz, the login page and its stylesheet are open. The signed cookie carries a session
id that the server must still know (sessions.py: logout, a changed password and idleness end
it). Forms carry the session's CSRF token (a hidden field, or the X-CSRF-Token header for
fetch), checked on every POST. Every response carries the security headers (headers.py).
Pages read the ledger through a read-only connection; when the console runs inside the
gateway (`ctx.gateway`), acknowledgements go straight to the rules engine and new alarms reach
open pages over server-sent events at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import wraps
from pathlib import Path
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..clock import from_us, to_us
from ..config import SiteConfig, User
from ..ledger.queries import alert_history, alert_kind_state, open_alerts, read_only, request_ack
from .auth import HOME, LoginThrottle, ack_permission, check_login, csrf_ok, may, new_csrf
from .handlers import Denied, wants_json
from .headers import SecurityHeaders
from .i18n import translator
from .live import Broadcaster
from .pages import page_routes
from .sessions import SessionStore

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
NAV = [("alarms", "/alarms", "alarms"), ("orders", "/orders", "orders"), ("meters", "/meters", "meters"),
       ("patrol", "/patrol", "patrol"), ("access", "/access", "access"), ("lighting", "/lighting", "lighting"),
       ("inspections", "/inspections", "inspections"), ("equipment", "/equipment", "equipment"),
       ("shift", "/shift", "shift"), ("service", "/service", "service"), ("allocation", "/allocation", "allocation"),
       ("health", "/health", "health")]


@dataclass
class WebContext:
    cfg: SiteConfig
    session_key: str
    gateway: object | None = None             # the running Gateway, when served by it
    broadcaster: Broadcaster | None = None
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    extra_users: list[User] = field(default_factory=list)   # e.g. the demo's user
    started: float = field(default_factory=time.monotonic)
    allocation_dirs: list[Path] = field(default_factory=list)
    sessions: SessionStore | None = None      # default: in memory
    # argon2 takes 64 MiB and most of a core per check: a few at a time, whatever the crowd
    verifying: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    signing: asyncio.Lock = field(default_factory=asyncio.Lock)    # allocation sign-offs, one at a time
    reprinting: asyncio.Lock = field(default_factory=asyncio.Lock)  # ... and their reports printed again
    background: set = field(default_factory=set)                    # tasks that outlive their request

    def __post_init__(self):
        if self.sessions is None:
            self.sessions = SessionStore(self.cfg.web.idle_minutes * 60, self.cfg.web.session_hours * 3600)
        self.sessions.prune(self.users)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.cfg.site.timezone)

    @property
    def users(self) -> dict[str, User]:
        return {u.name: u for u in [*self.cfg.users, *self.extra_users]}

    @contextmanager
    def db(self):
        """A read-only connection to the ledger (None when there is no ledger yet)."""
        with read_only(self.cfg.storage_path) as con:
            yield con

    def local(self, us: int | None, fmt: str = "%m-%d %H:%M:%S") -> str:
        return from_us(us).astimezone(self.tz).strftime(fmt) if us else ""


def local_path(target: str) -> str | None:
    """`target` if it is a path of this console, None if a browser could read it as another site
    ("//host", "/\\host", or those hidden by a tab or newline, which browsers drop)."""
    if (not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(c < " " or c == "\x7f" for c in target)):
        return None
    return target


def signed_in(request: Request, ctx: WebContext) -> User | None:
    """The request's user if its session still stands (looked up once per request)."""
    if "estate.user" not in request.scope:
        sid = request.session.get("sid")
        user = ctx.sessions.user(sid, ctx.users)
        if sid and user is None:
            request.session.pop("sid")           # ended: the cookie forgets it
        request.scope["estate.user"] = user
    return request.scope["estate.user"]


def page_context(request: Request, ctx: WebContext, **extra) -> dict:
    lang = request.cookies.get("lang") or ctx.cfg.web.language
    user = signed_in(request, ctx)
    if "csrf" not in request.session:
        request.session["csrf"] = new_csrf()
    return {"request": request, "t": translator(lang), "lang": lang, "user": user.name if user else None,
            "role": user.role if user else None,
            "csrf": request.session["csrf"], "site": ctx.cfg.site, "clock_warning": clock_warning(ctx),
            "nav": [(key, href) for key, href, perm in NAV if may(user and user.role, perm)],
            "path": request.url.path, **extra}


def clock_warning(ctx: WebContext) -> str | None:
    """Why the wall clock is not trusted, when the gateway says so: the rules judge nothing until
    it is (gateway/timesync.py), and the people on duty must know that alarms are held back."""
    ts = getattr(ctx.gateway, "timesync", None) if ctx.gateway is not None else None
    if ts is None or ts.trusted:
        return None
    return ts.reason or "?"


def create_app(ctx: WebContext) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["severity_order"] = SEVERITY_ORDER
    templates.env.globals["may"] = may

    def render(request: Request, name: str, status: int = 200, **extra) -> Response:
        return templates.TemplateResponse(request, name, page_context(request, ctx, **extra), status_code=status)

    def guarded(permission: str | None):
        """The endpoint needs a logged-in user with `permission` (None: any user); POSTs need CSRF."""
        def wrap(fn):
            @wraps(fn)
            async def endpoint(request: Request) -> Response:
                user = signed_in(request, ctx)
                if user is None:
                    if wants_json(request) or request.url.path == "/events":
                        return JSONResponse({"error": "login required"}, status_code=401)
                    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
                if permission is not None and not may(user.role, permission):
                    return _deny(request, 403, "forbidden")
                if request.method == "POST":
                    form = await request.form()
                    token = request.headers.get("x-csrf-token") or form.get("csrf")
                    if not csrf_ok(request.session.get("csrf"), token):
                        return _deny(request, 403, "csrf_failed")
                try:
                    return await fn(request, user)
                except Denied as d:
                    return _deny(request, d.status, d.what)
            return endpoint
        return wrap

    def _deny(request: Request, status: int, what: str) -> Response:
        if wants_json(request):
            return JSONResponse({"error": what}, status_code=status)
        return render(request, "message.html", status=status, message_key=what)

    # ---- open endpoints ---------------------------------------------------------------------------
    async def healthz(request: Request) -> Response:
        gw = ctx.gateway
        return JSONResponse({"status": "ok", "uptime_s": round(time.monotonic() - ctx.started, 1),
                             "gateway": gw is not None, "ledger": ctx.cfg.storage_path.exists()})

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return render(request, "login.html", next=request.query_params.get("next", ""))
        form = await request.form()
        name, password = str(form.get("user", "")).strip(), str(form.get("password", ""))
        address = request.client.host if request.client else "?"
        if not csrf_ok(request.session.get("csrf"), form.get("csrf")):
            return render(request, "login.html", status=403, error="csrf_failed", next="")
        wait = ctx.throttle.admit(name, address)
        if wait > 0:
            log.warning("web: login for %r from %s refused, too many failures (wait %.0f s)", name, address, wait)
            r = render(request, "login.html", status=429, error="login_wait", wait=int(wait + 0.999), next="")
            r.headers["Retry-After"] = str(int(wait + 0.999))
            return r
        user = await verify(name, password, address)
        if user is None:
            log.info("web: failed login for %r from %s", name, address)
            return render(request, "login.html", status=401, error="login_failed", next="")
        ctx.sessions.end(request.session.get("sid"))     # a new session id at every login
        request.session.clear()
        request.session.update(sid=ctx.sessions.start(user), csrf=new_csrf())
        log.info("web: %s (%s) logged in from %s", user.name, user.role, address)
        return RedirectResponse(local_path(str(form.get("next") or "")) or HOME[user.role], status_code=303)

    async def verify(name: str, password: str, address: str) -> User | None:
        """The password check of an attempt the throttle let through, which it then learns the
        outcome of (a cancelled check counts as a failure)."""
        user = None
        try:
            async with ctx.verifying:
                # argon2 is deliberately slow: check it off the event loop
                user = await asyncio.to_thread(check_login, ctx.users, name, password)
        finally:
            (ctx.throttle.failed if user is None else ctx.throttle.succeeded)(name, address)
        return user

    @guarded(None)
    async def logout(request: Request, user: User) -> Response:
        sid = request.session.get("sid")
        ctx.sessions.end(sid)
        if ctx.broadcaster is not None:
            ctx.broadcaster.close(sid)                   # its open pages' live updates stop too
        request.session.clear()
        log.info("web: %s logged out", user.name)
        return RedirectResponse("/login", status_code=303)

    async def language(request: Request) -> Response:
        lang = request.path_params["lang"]
        # back to the page the link was on, if it is one of ours (the Referer is the client's word)
        back = urlsplit(request.headers.get("referer") or "")
        same_site = (back.scheme, back.netloc) == (request.url.scheme, request.url.netloc)
        target = local_path(back.path + (f"?{back.query}" if back.query else "")) if same_site else None
        r = RedirectResponse(target if target and lang in ("zh", "en") else "/", status_code=303)
        if lang in ("zh", "en"):
            r.set_cookie("lang", lang, max_age=365 * 86400, httponly=True, samesite="strict")
        return r

    @guarded(None)
    async def home(request: Request, user: User) -> Response:
        return RedirectResponse(HOME[user.role], status_code=303)

    # ---- alarms -------------------------------------------------------------------------------------
    def open_alarms() -> list[dict]:
        gw = ctx.gateway
        if gw is not None and gw.rules is not None:
            # Inside the gateway the engine is the truth: the ledger commits up to a second later,
            # and a page refreshed on a live event must already show that event. Lighting and
            # maintenance alarms are held by their own rooms.
            out = [{"id": a.id, "rule": a.rule, "kind": a.kind, "source": a.source, "severity": a.severity,
                    "state": a.state, "message": a.message, "message_en": a.message_en,
                    "raised_us": to_us(a.raised_at), "updated_us": to_us(a.updated_at), "acked_by": a.acked_by,
                    "ack_note": a.ack_note} for a in gw.open_alerts()]
            return _finish(out)
        with ctx.db() as db:
            if db is None:
                return []
            return _finish(open_alerts(db))

    def _finish(out: list[dict]) -> list[dict]:
        for a in out:
            a["raised"] = ctx.local(a["raised_us"])
            a["updated"] = ctx.local(a["updated_us"])
        out.sort(key=lambda a: (a["state"] != "active", SEVERITY_ORDER.get(a["severity"], 9), -a["raised_us"]))
        return out

    def with_orders(rows: list[dict], user: User) -> list[dict]:
        """Each alarm's permissions and the repair order made from it (one click makes one)."""
        from ..ledger.maintenance import has_tables, orders_for_alerts
        with ctx.db() as db:
            made = orders_for_alerts(db, [a["id"] for a in rows]) if db is not None and has_tables(db) else {}
        for a in rows:
            a["may_ack"] = a["state"] == "active" and may(user.role, ack_permission(a["kind"]))
            a["order"] = made[a["id"]][-1][0] if a["id"] in made else None
            a["may_order"] = a["order"] is None and may(user.role, "order_create")
        return rows

    @guarded("alarms")
    async def alarms(request: Request, user: User) -> Response:
        return render(request, "alarms.html", alarms=with_orders(open_alarms(), user))

    @guarded("alarms")
    async def api_alarms(request: Request, user: User) -> Response:
        return JSONResponse(with_orders(open_alarms(), user))

    @guarded("alarms")
    async def ack(request: Request, user: User) -> Response:
        alert_id = request.path_params["alert_id"]
        note = str((await request.form()).get("note", "")).strip()[:500]
        with ctx.db() as db:
            row = alert_kind_state(db, alert_id) if db else None
        gw = ctx.gateway
        live = gw.live_alert(alert_id) if gw is not None else None
        kind, state = (live.kind, live.state) if live is not None else (row or (None, None))
        if kind is None:
            raise Denied(404, "not_found")
        if not may(user.role, ack_permission(kind)):
            log.info("web: %s (%s) may not acknowledge %s alarm %s", user.name, user.role, kind, alert_id)
            raise Denied(403, "forbidden")
        if live is not None:
            done = gw.ack_alert(alert_id, user.name, note)
            if done is None:
                raise Denied(409, "not_found")
        elif state == "cleared":
            raise Denied(409, "not_found")
        else:   # another process runs the gateway: it applies the request within a second
            request_ack(ctx.cfg.storage_path, alert_id, user.name, note, to_us(datetime.now(timezone.utc)))
        log.info("web: alarm %s acknowledged by %s: %s", alert_id, user.name, note)
        if wants_json(request):
            return JSONResponse({"id": alert_id, "state": "acknowledged", "acked_by": user.name})
        return RedirectResponse("/alarms", status_code=303)

    @guarded("alarms")
    async def history(request: Request, user: User) -> Response:
        q = request.query_params
        since_text = q.get("since") or (datetime.now(ctx.tz) - timedelta(days=1)).strftime("%Y-%m-%d")
        try:
            since = datetime.fromisoformat(since_text).replace(tzinfo=ctx.tz)
        except ValueError:
            since_text = (datetime.now(ctx.tz) - timedelta(days=1)).strftime("%Y-%m-%d")
            since = datetime.fromisoformat(since_text).replace(tzinfo=ctx.tz)
        severity, rule, what = q.get("severity", ""), q.get("rule", ""), q.get("what", "")
        with ctx.db() as db:
            items = alert_history(db, to_us(since), severity, rule, what, limit=1000) if db else []
        from ..ledger.maintenance import has_tables, orders_for_alerts
        with ctx.db() as db:
            made = orders_for_alerts(db, [i["id"] for i in items]) if db is not None and has_tables(db) else {}
        for i in items:
            i["time"] = ctx.local(i["ts_us"], "%Y-%m-%d %H:%M:%S")
            i["orders"] = made.get(i["id"], [])       # the repair orders made from the alarm, linked
        return render(request, "history.html", items=items, since=since_text, severity=severity, rule=rule,
                      what=what, rules=sorted({r.id for r in ctx.cfg.rules}))

    # ---- live updates -----------------------------------------------------------------------------
    @guarded(None)
    async def events(request: Request, user: User) -> Response:
        b = ctx.broadcaster
        if b is None:
            return JSONResponse({"error": "no live updates: the console is not running inside the gateway"},
                                status_code=503)
        sid = request.session.get("sid")
        client = b.connect(owner=sid)

        async def stream():
            try:
                yield "retry: 2000\n\n"
                while True:
                    batch = await client.next_batch(15.0)
                    # the session is asked again each time (which also keeps an open page's
                    # session from idling out): one that ended stops its stream
                    if client.closed or ctx.sessions.user(sid, ctx.users) is None:
                        return
                    yield "".join(batch) if batch else ": keep-alive\n\n"
            finally:
                b.disconnect(client)
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # ---- machine endpoints ------------------------------------------------------------------------
    async def metrics(request: Request) -> Response:
        user = signed_in(request, ctx)
        if user is None:
            user = await _basic_user(request)
        if user is None or not may(user.role, "health"):
            return PlainTextResponse("login required\n", status_code=401,
                                     headers={"WWW-Authenticate": 'Basic realm="estate-gateway"'})
        from .metrics import exposition
        from .views.health import bus_counters
        body, content_type = await asyncio.to_thread(exposition, ctx, bus_counters(ctx.gateway))
        return Response(body, media_type=content_type)

    async def _basic_user(request: Request) -> User | None:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("basic "):
            return None
        try:
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        address = request.client.host if request.client else "?"
        if ctx.throttle.admit(name, address) > 0:
            return None
        return await verify(name, password, address)

    routes = [
        Route("/healthz", healthz),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/lang/{lang}", language),
        Route("/", home),
        Route("/alarms", alarms),
        Route("/alarms/history", history),
        Route("/alarms/{alert_id:path}/ack", ack, methods=["POST"]),
        Route("/api/alarms", api_alarms),
        Route("/events", events),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    routes += page_routes(ctx, guarded, render)
    cookie_secure = ctx.cfg.web.tls_cert is not None
    middleware = [Middleware(SecurityHeaders),
                  Middleware(SessionMiddleware, secret_key=ctx.session_key, session_cookie="estate_session",
                             max_age=int(ctx.cfg.web.session_hours * 3600), same_site="strict",
                             https_only=cookie_secure)]
    return Starlette(routes=routes, middleware=middleware)
