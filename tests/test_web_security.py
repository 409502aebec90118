"""The console's defences, against the real server over loopback (no browser): logins required,
roles, CSRF tokens, login throttling, session cookies and server-side sessions, /metrics and
/healthz, security headers, redirects that stay on the console.

The gateway runs a small simulated site (two meters, an alarm raised at once: tests/web_fixtures.py)
in the module's event loop; clients are aiohttp sessions with their own cookie jars, some of them
connecting from other loopback addresses (127.0.0.2 ...) to be other clients to the throttle.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import sqlite3
from urllib.parse import urlsplit

import aiohttp
import itsdangerous
import pytest
import pytest_asyncio
from starlette.routing import Mount, Route

from gateway.config import User
from gateway.web.app import create_app
from gateway.web.auth import LoginThrottle, hash_password
from web_fixtures import (HOME, PAGES, PASSWORDS, ROLE_PAGES, ROLES, ROOT, SITE_INFO, USERS, login, page_csrf,
                          post_login, small_site, start_gateway, until, user_entries, web_section)

pytestmark = pytest.mark.asyncio(loop_scope="module")

OPEN = ("/healthz", "/login")                  # and /lang/{lang}, /static: open on purpose
MACHINE = ("/api/", "/events", "/metrics")     # answer 401, never a redirect


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory):
    async with small_site(tmp_path_factory.mktemp("web-security")) as console:
        await until(lambda: _open_ids(console), "the first alarm in the ledger")
        yield console


@pytest.fixture
def fresh_throttle(site):
    """A throttle of this test's own (the module's site is shared); `clock` is settable."""
    now = [1000.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    saved = site.gw.web.throttle
    site.gw.web.throttle = throttle
    yield now
    site.gw.web.throttle = saved


def _open_ids(site) -> list[str]:
    return [i for (i,) in site.ledger_rows("SELECT id FROM alerts WHERE state != 'cleared'")]


def _alarm_id(site, rule: str = "voltage-test") -> str:
    (alert_id,) = [i for (i,) in site.ledger_rows("SELECT id FROM alerts WHERE rule = ? AND state != 'cleared'",
                                                  (rule,))]
    return alert_id


def _concrete(path: str) -> str:
    """A request path for a route path: each {param} (or {param:path}) becomes 'x'."""
    return re.sub(r"\{[^}]+\}", "x", path)


def _guarded_requests(site) -> list[tuple[str, str]]:
    """(method, path) of every route of the app but the open ones; GET and POST only."""
    out = []
    for r in create_app(site.gw.web).routes:
        if isinstance(r, Mount):
            if not r.path.startswith("/static"):
                out.append(("GET", r.path + "/x"))
            continue
        assert isinstance(r, Route), r
        if r.path in OPEN or r.path.startswith("/lang/"):
            continue
        for method in sorted((r.methods or {"GET"}) - {"HEAD"}):
            out.append((method, _concrete(r.path)))
    return out


# ---- logins required ------------------------------------------------------------------------

async def test_every_page_and_api_refuses_an_anonymous_request(site):
    requests = _guarded_requests(site)
    paths = {p for _, p in requests}
    assert {"/", "/alarms", "/alarms/history", "/api/alarms", "/events", "/metrics", "/logout",
            "/alarms/x/ack"} <= paths, paths
    wrong = []
    async with site.session() as s:
        for method, path in requests:
            async with s.request(method, path, allow_redirects=False, data={} if method == "POST" else None) as r:
                await r.read()
                if path.startswith(MACHINE):
                    if r.status != 401:
                        wrong.append((method, path, r.status, "want 401"))
                elif r.status not in (302, 303, 307) or not r.headers.get("location", "").startswith("/login"):
                    wrong.append((method, path, r.status, r.headers.get("location"), "want a redirect to /login"))
    assert not wrong, wrong


async def test_the_login_redirect_comes_back_to_the_page(site):
    async with site.session() as s:
        async with s.get("/alarms/history", allow_redirects=False) as r:
            assert r.status == 303
            target = r.headers["location"]
        assert urlsplit(target).path == "/login" and "next=/alarms/history" in target
        async with s.get(target) as r:
            html = await r.text()
        assert 'name="next" value="/alarms/history"' in html
        token = await page_csrf(s)
        async with s.post("/login", data={"user": USERS["guard"], "password": PASSWORDS["guard"], "csrf": token,
                                          "next": "/alarms/history"}, allow_redirects=False) as r:
            assert (r.status, r.headers["location"]) == (303, "/alarms/history")
        # an address outside the console is not followed
        token = await page_csrf(s)
        async with s.post("/login", data={"user": USERS["guard"], "password": PASSWORDS["guard"], "csrf": token,
                                          "next": "//evil.example/x"}, allow_redirects=False) as r:
            assert (r.status, r.headers["location"]) == (303, HOME["guard"])


@pytest.mark.parametrize("role", ROLES)
async def test_a_role_is_refused_the_pages_of_other_roles(site, role):
    paths = {r.path for r in create_app(site.gw.web).routes if isinstance(r, Route)}
    async with site.session() as s:
        await login(s, role)
        for page in PAGES:
            if f"/{page}" not in paths:
                continue        # a page not written yet (test_web_browser.py marks those)
            async with s.get(f"/{page}", allow_redirects=False) as r:
                await r.read()
                assert r.status == (200 if page in ROLE_PAGES[role] else 403), (role, page, r.status)
        async with s.get("/api/alarms", allow_redirects=False) as r:
            assert r.status == (200 if "alarms" in ROLE_PAGES[role] else 403), (role, r.status)


# ---- CSRF -----------------------------------------------------------------------------------

async def test_login_needs_the_csrf_token_of_its_session(site):
    async with site.session() as s, site.session() as other:
        await page_csrf(s)                                   # the session has a token now
        others_token = await page_csrf(other)
        for token in ("", "forged-" + "x" * 24, others_token):
            r = await post_login(s, USERS["admin"], PASSWORDS["admin"], csrf=token)
            assert r.status == 403, (token, r.status)
        async with s.post("/login", data={"user": USERS["admin"], "password": PASSWORDS["admin"]},
                          allow_redirects=False) as r:        # no field at all
            assert r.status == 403
        async with s.get("/api/alarms") as r:
            assert r.status == 401                           # still nobody
        r = await post_login(s, USERS["admin"], PASSWORDS["admin"])
        assert r.status == 303


async def test_logout_needs_the_csrf_token(site):
    async with site.session() as s, site.session() as other:
        token = await login(s, "guard")
        others_token = await login(other, "guard")
        for data, headers in (({}, {}), ({"csrf": "forged-token"}, {}), ({"csrf": others_token}, {}),
                              ({}, {"X-CSRF-Token": "forged-token"})):
            async with s.post("/logout", data=data, headers=headers, allow_redirects=False) as r:
                assert r.status == 403, (data, headers, r.status)
            async with s.get("/api/alarms") as r:
                assert r.status == 200                       # still logged in
        async with s.post("/logout", data={"csrf": token}, allow_redirects=False) as r:
            assert (r.status, r.headers["location"]) == (303, "/login")
        async with s.get("/api/alarms") as r:
            assert r.status == 401


async def test_acknowledging_needs_the_csrf_token_and_the_right_role(site):
    alert_id = _alarm_id(site)                 # voltage-test: a meter alarm (threshold)
    book = site.gw.rules.book
    json_accept = {"Accept": "application/json"}
    async with site.session() as admin, site.session() as guard:
        token = await login(admin, "admin")
        guard_token = await login(guard, "guard")
        for data, headers in (({"note": "x"}, {}), ({"note": "x", "csrf": "forged"}, {}),
                              ({"note": "x", "csrf": guard_token}, {}),
                              ({"note": "x"}, {"X-CSRF-Token": "forged"})):
            async with admin.post(f"/alarms/{alert_id}/ack", data=data, headers={**headers, **json_accept},
                                  allow_redirects=False) as r:
                assert r.status == 403, (data, headers, r.status)
                assert (await r.json())["error"] == "csrf_failed"
        assert book.by_id(alert_id).state == "active"
        # a guard with a valid token may still not acknowledge a meter alarm
        async with guard.post(f"/alarms/{alert_id}/ack", data={"note": "forged", "csrf": guard_token},
                              headers=json_accept, allow_redirects=False) as r:
            assert r.status == 403 and (await r.json())["error"] == "forbidden"
        async with guard.get("/api/alarms") as r:
            (mine,) = [a for a in await r.json() if a["id"] == alert_id]
            assert mine["may_ack"] is False
        assert book.by_id(alert_id).state == "active"
        # the admin with the session's token may (header, as the page's script sends it)
        async with admin.post(f"/alarms/{alert_id}/ack", data={"note": "checked"},
                              headers={"X-CSRF-Token": token, **json_accept}, allow_redirects=False) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["acked_by"] == USERS["admin"]
        alert = book.by_id(alert_id)
        assert (alert.state, alert.acked_by, alert.ack_note) == ("acknowledged", USERS["admin"], "checked")


# ---- login throttling -----------------------------------------------------------------------

async def _fail(site, address: str, name: str) -> None:
    async with site.session(address) as s:
        r = await post_login(s, name, "wrong password")
        assert r.status == 401, r.status


async def test_five_wrong_passwords_then_even_the_right_one_waits(site, fresh_throttle):
    now = fresh_throttle
    for _ in range(5):
        await _fail(site, "127.0.0.1", USERS["guard"])
    async with site.session() as s:
        r = await post_login(s, USERS["guard"], PASSWORDS["guard"])
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        async with s.get("/api/alarms") as r2:
            assert r2.status == 401                          # not logged in
    now[0] += 3600                                           # the window has passed
    async with site.session() as s:
        r = await post_login(s, USERS["guard"], PASSWORDS["guard"])
        assert r.status == 303


async def test_the_wait_grows_and_ends(site, fresh_throttle):
    now = fresh_throttle
    for _ in range(5):
        await _fail(site, "127.0.0.1", USERS["electrician"])
    async with site.session() as s:
        r = await post_login(s, USERS["electrician"], PASSWORDS["electrician"])
        first = int(r.headers["Retry-After"])
        assert r.status == 429
    now[0] += first + 0.1                                    # waited: one more try is taken ...
    await _fail(site, "127.0.0.1", USERS["electrician"])     # ... and fails again
    async with site.session() as s:
        r = await post_login(s, USERS["electrician"], PASSWORDS["electrician"])
        assert r.status == 429
        assert int(r.headers["Retry-After"]) > first
        now[0] += int(r.headers["Retry-After"]) + 0.1
        r = await post_login(s, USERS["electrician"], PASSWORDS["electrician"])
        assert r.status == 303


async def test_the_throttle_counts_per_address(site, fresh_throttle):
    # five different names from one address: each name failed once, the address five times
    for i in range(5):
        await _fail(site, "127.0.0.2", f"nobody-{i}")
    async with site.session("127.0.0.2") as s:
        r = await post_login(s, USERS["admin"], PASSWORDS["admin"])
        assert r.status == 429 and "Retry-After" in r.headers
    async with site.session("127.0.0.3") as s:          # another address: the same user logs in
        r = await post_login(s, USERS["admin"], PASSWORDS["admin"])
        assert r.status == 303


async def test_the_throttle_counts_per_user_name(site, fresh_throttle):
    # one name from five addresses: each address failed once, the name five times
    for i in range(5):
        await _fail(site, f"127.0.0.{10 + i}", USERS["guard"])
    async with site.session("127.0.0.20") as s:
        r = await post_login(s, USERS["guard"], PASSWORDS["guard"])
        assert r.status == 429 and "Retry-After" in r.headers
        r = await post_login(s, USERS["electrician"], PASSWORDS["electrician"])   # another user, same address
        assert r.status == 303


async def test_metrics_basic_auth_is_throttled_too(site, fresh_throttle):
    bad = aiohttp.BasicAuth(USERS["admin"], "wrong password")
    good = aiohttp.BasicAuth(USERS["admin"], PASSWORDS["admin"])
    async with site.session("127.0.0.30") as s:
        for _ in range(5):
            async with s.get("/metrics", auth=bad) as r:
                assert r.status == 401
        async with s.get("/metrics", auth=good) as r:
            assert r.status == 401                      # refused while the throttle holds
    async with site.session("127.0.0.31") as s:
        r = await post_login(s, USERS["admin"], PASSWORDS["admin"])
        assert r.status == 429                          # the name failed five times over Basic auth


def test_login_throttle_with_a_clock():
    now = [0.0]
    t = LoginThrottle(free=5, window_s=900, max_wait_s=300, clock=lambda: now[0])
    for _ in range(4):
        t.failed("wang", "10.0.0.1")
    assert t.wait_s("wang", "10.0.0.1") == 0
    t.failed("wang", "10.0.0.1")
    assert t.wait_s("wang", "10.0.0.1") > 0            # the sixth attempt waits
    assert t.wait_s("wang", "10.0.0.9") > 0            # by name, from anywhere
    assert t.wait_s("li", "10.0.0.1") > 0              # by address, for anybody
    assert t.wait_s("li", "10.0.0.9") == 0
    waits = []
    for _ in range(8):                                  # 6th ... 13th failure, all within the window
        now[0] += t.wait_s("wang", "10.0.0.1")
        waits.append(t.wait_s("wang", "10.0.0.1"))
        assert waits[-1] == 0
        t.failed("wang", "10.0.0.1")
        waits.append(t.wait_s("wang", "10.0.0.1"))
    grown = waits[1::2]
    assert grown == sorted(grown) and grown[0] < grown[-1] == 300   # doubling up to max_wait_s
    now[0] += 901                                       # the window has passed: forgotten
    assert t.wait_s("wang", "10.0.0.1") == 0
    for i in range(5):                                  # a success clears the name
        t.failed("zhao", f"10.0.1.{i}")
    assert t.wait_s("zhao", "10.0.2.1") > 0
    t.succeeded("zhao", "10.0.2.1")
    assert t.wait_s("zhao", "10.0.2.1") == 0


async def test_wrong_passwords_sent_all_at_once_are_throttled_too(site, fresh_throttle):
    """60 wrong passwords for one user at once, from one address in one session (one CSRF token):
    each attempt is counted when it is let through, not when its (slow) check fails."""
    async with site.session("127.0.0.41") as s:
        token = await page_csrf(s)
        tries = await asyncio.gather(*(post_login(s, USERS["guard"], f"wrong {i}", csrf=token) for i in range(60)))
        statuses = sorted(r.status for r in tries)
        assert statuses == [401] * 5 + [429] * 55, statuses
        assert all(int(r.headers["Retry-After"]) >= 1 for r in tries if r.status == 429)
        r = await post_login(s, USERS["guard"], PASSWORDS["guard"], csrf=token)
        assert r.status == 429                          # even the right password waits now
    async with site.session("127.0.0.42") as s:        # by name, from anywhere
        r = await post_login(s, USERS["guard"], PASSWORDS["guard"])
        assert r.status == 429


async def test_right_passwords_at_once_do_not_lock_out_a_shared_address(site, fresh_throttle):
    """The guard room's one PC: people log in one after another (here: at once), all succeed,
    and their attempts are not left counted against the address."""
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(site.session("127.0.0.43")) for _ in range(4)]
        tries = await asyncio.gather(*(post_login(s, USERS[role], PASSWORDS[role]) for s, role in zip(sessions, ROLES)))
        assert [r.status for r in tries] == [303] * 4
    for i in range(4):                                  # four failures from the address: still under five
        await _fail(site, "127.0.0.43", f"nobody-{i}")
    async with site.session("127.0.0.43") as s:
        r = await post_login(s, USERS["admin"], PASSWORDS["admin"])
        assert r.status == 303


def test_attempts_count_before_they_are_decided():
    t = LoginThrottle(free=5, clock=lambda: 0.0)
    assert [t.admit("wang", "10.0.0.1") for _ in range(5)] == [0.0] * 5
    assert t.admit("wang", "10.0.0.1") > 0             # five undecided attempts: the sixth waits
    assert t.admit("wang", "10.0.0.9") > 0             # by name
    assert t.admit("li", "10.0.0.1") > 0               # by address
    for _ in range(4):
        t.failed("wang", "10.0.0.1")
    t.succeeded("wang", "10.0.0.1")                     # the name is cleared, the address keeps 4 failures
    assert t.admit("wang", "10.0.0.9") == 0
    t.succeeded("wang", "10.0.0.9")
    assert t.admit("li", "10.0.0.1") == 0               # the address's fifth
    assert t.admit("li", "10.0.0.1") > 0


# ---- the session cookie -----------------------------------------------------------------------

def _session_cookie(response) -> dict[str, str]:
    for header in response.headers.getall("Set-Cookie", []):
        name, _, rest = header.partition("=")
        if name.strip() == "estate_session":
            value, *attrs = [p.strip() for p in rest.split(";")]
            out = {"": value}
            for a in attrs:
                k, _, v = a.partition("=")
                out[k.strip().lower()] = v.strip().lower()
            return out
    raise AssertionError(f"no estate_session cookie in {response.headers.getall('Set-Cookie', [])}")


async def test_the_session_cookie_is_httponly_and_samesite_strict(site):
    async with site.session() as s:
        r = await post_login(s, USERS["guard"], PASSWORDS["guard"])
        assert r.status == 303
        cookie = _session_cookie(r)
    assert "httponly" in cookie
    assert cookie.get("samesite") == "strict"
    assert "secure" not in cookie                       # plain HTTP: a Secure cookie would never come back


async def test_over_tls_the_session_cookie_is_secure(tmp_path):
    async with small_site(tmp_path, tls=True) as console:
        assert console.url.startswith("https://")
        async with console.session() as s:
            r = await post_login(s, USERS["admin"], PASSWORDS["admin"])
            assert r.status == 303
            cookie = _session_cookie(r)
            assert "secure" in cookie and "httponly" in cookie and cookie.get("samesite") == "strict"
            async with s.get("/api/alarms") as r2:
                assert r2.status == 200


def _signed(key: str, session: dict) -> str:
    data = base64.b64encode(json.dumps(session).encode())
    return itsdangerous.TimestampSigner(key).sign(data).decode()


def _payload(cookie_value: str) -> dict:
    return json.loads(base64.b64decode(cookie_value.partition(".")[0]))


async def test_a_cookie_signed_with_another_key_is_refused(site):
    async with site.session() as s:                     # what a real admin session's cookie holds
        r = await post_login(s, USERS["admin"], PASSWORDS["admin"])
        session = _payload(_session_cookie(r)[""])
    assert set(session) == {"sid", "csrf"}
    async with site.session() as s:
        s.cookie_jar.update_cookies({"estate_session": _signed("another key " + "k" * 20, session)})
        async with s.get("/api/alarms") as r:
            assert r.status == 401
        async with s.get("/alarms", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["location"].startswith("/login")
    # the same cookie signed with the console's key is taken: the forgery was well made, only its key is wrong
    async with site.session() as s:
        s.cookie_jar.update_cookies({"estate_session": _signed(site.gw.web.session_key, session)})
        async with s.get("/api/alarms") as r:
            assert r.status == 200
    # the key alone is not enough: a cookie that names a user but no session the server knows is refused
    for forged in ({"user": USERS["admin"], "csrf": "t" * 32}, {"sid": "s" * 43, "csrf": "t" * 32}):
        async with site.session() as s:
            s.cookie_jar.update_cookies({"estate_session": _signed(site.gw.web.session_key, forged)})
            async with s.get("/api/alarms") as r:
                assert r.status == 401, forged
    async with site.session() as s:                     # a real cookie with its payload changed
        r = await post_login(s, USERS["guard"], PASSWORDS["guard"])
        value = _session_cookie(r)[""]
        _, _, stamp_and_signature = value.partition(".")    # payload.timestamp.signature
        forged = base64.b64encode(json.dumps(session).encode()).decode() + "." + stamp_and_signature
        s.cookie_jar.clear()
        s.cookie_jar.update_cookies({"estate_session": forged})
        async with s.get("/api/alarms") as r:
            assert r.status == 401


# ---- server-side sessions --------------------------------------------------------------------

@pytest.fixture
def session_clock(site):
    """The console's session store on a settable wall clock (the module's site is shared)."""
    sessions = site.gw.web.sessions
    now = [sessions.clock()]
    saved = sessions.clock
    sessions.clock = lambda: now[0]
    yield now
    sessions.clock = saved


async def _status(site, cookie: str, path: str = "/api/alarms") -> int:
    """`path` with only this session cookie, from a fresh client."""
    async with site.session() as s:
        s.cookie_jar.update_cookies({"estate_session": cookie})
        async with s.get(path, allow_redirects=False) as r:
            return r.status


async def test_after_logout_the_old_cookie_is_refused(site):
    async with site.session() as s:
        r = await post_login(s, USERS["guard"], PASSWORDS["guard"])
        cookie = _session_cookie(r)[""]
        token = await page_csrf(s, "/alarms")
        assert await _status(site, cookie) == 200
        async with s.post("/logout", data={"csrf": token}, allow_redirects=False) as r:
            assert r.status == 303
    assert await _status(site, cookie) == 401          # a copy kept of the cookie is worth nothing now
    assert await _status(site, cookie, "/alarms") == 303


async def test_logout_ends_the_live_updates_of_the_session(site):
    async with site.session() as s:
        token = await login(s, "guard")
        async with s.get("/events") as stream:
            assert stream.status == 200
            assert (await stream.content.readline()).startswith(b"retry:")
            async with s.post("/logout", data={"csrf": token}, allow_redirects=False) as r:
                assert r.status == 303
            rest = await asyncio.wait_for(stream.content.read(), 30)     # the server ends the stream
            assert stream.content.at_eof(), rest
        async with s.get("/events") as again:
            assert again.status == 401


async def test_an_idle_session_ends_and_a_used_one_lasts_up_to_session_hours(site, session_clock):
    web = site.cfg.web
    assert (web.idle_minutes, web.session_hours) == (30, 12)   # the defaults
    async with site.session() as s:
        r = await post_login(s, USERS["guard"], PASSWORDS["guard"])
        idle = _session_cookie(r)[""]
    async with site.session() as s:
        r = await post_login(s, USERS["electrician"], PASSWORDS["electrician"])
        busy = _session_cookie(r)[""]
    session_clock[0] += 29 * 60
    assert await _status(site, busy) == 200
    session_clock[0] += 2 * 60                          # 31 minutes without a request
    assert await _status(site, idle) == 401
    assert await _status(site, busy) == 200             # asked 2 minutes ago
    for _ in range(11 * 3):                             # in use every 20 minutes for 11 more hours
        session_clock[0] += 20 * 60
        assert await _status(site, busy) == 200
    session_clock[0] += 30 * 60                         # 12 h 2 min after login
    assert await _status(site, busy) == 401


async def test_a_changed_password_or_a_removed_user_ends_the_sessions_and_a_reload_keeps_the_others(tmp_path):
    """`gateway users add` (a new password) or `users remove`, then a reload: the service makes a
    new Gateway on the changed site file and the same ledger (gateway/service.py), as here."""
    users = {u["name"]: dict(u) for u in user_entries()}
    data = {"site": SITE_INFO, "storage": {"path": str(tmp_path / "gw.db")}, "web": web_section(),
            "users": list(users.values())}
    cookies = {}
    console = await start_gateway(data, tmp_path, tmp_path)
    try:
        for role in ROLES:
            async with console.session() as s:
                r = await post_login(s, USERS[role], PASSWORDS[role])
                cookies[role] = _session_cookie(r)[""]
            assert await _status(console, cookies[role], "/api/health") == 200
        sids = [_payload(c)["sid"] for c in cookies.values()]
        kept = console.ledger_rows("SELECT key, user FROM web_sessions")
        assert sorted(u for _, u in kept) == sorted(USERS.values())
        assert not [sid for sid in sids if any(sid in key for key, _ in kept)]   # ids are kept only hashed
    finally:
        await console.stop()
    users[USERS["guard"]]["password_hash"] = hash_password("another-Pw-2b9d")   # users add, same name
    del users[USERS["electrician"]]                                               # users remove
    data.update(users=list(users.values()), web=web_section())
    console = await start_gateway(data, tmp_path, tmp_path)
    try:
        status = {role: await _status(console, cookies[role], "/api/health") for role in ROLES}
        # the new password and the removed user end theirs; the reload logged nobody else out
        assert status == {"guard": 401, "electrician": 401, "accountant": 200, "admin": 200}
        assert sorted(u for _, u in console.ledger_rows("SELECT key, user FROM web_sessions")) == \
            sorted([USERS["admin"], USERS["accountant"]])
        async with console.session() as s:
            r = await post_login(s, USERS["guard"], "another-Pw-2b9d")
            assert r.status == 303
    finally:
        await console.stop()


def test_sessions_live_on_in_memory_when_the_ledger_cannot_be_written(caplog):
    from gateway.web.sessions import SessionStore

    class FullLedger:                   # pure logic: a ledger whose disk is full
        def web_sessions(self):
            return []

        def save_web_session(self, *row):
            raise sqlite3.OperationalError("database or disk is full")

        def delete_web_sessions(self, keys):
            raise sqlite3.OperationalError("database or disk is full")
    now = [0.0]
    store = SessionStore(idle_s=1800, max_s=3600, ledger=FullLedger(), clock=lambda: now[0])
    wang = User(name="wang", role="guard", password_hash=user_entries()[0]["password_hash"])
    users = {"wang": wang}
    sid, other = store.start(wang), store.start(wang)
    now[0] += 120
    assert store.user(sid, users) is wang and store.user(other, users) is wang
    store.end(sid)
    assert store.user(sid, users) is None and store.user(other, users) is wang
    assert [r.message for r in caplog.records].count(
        "web: cannot save console sessions in the ledger (kept in memory): database or disk is full") == 1


# ---- machine endpoints ------------------------------------------------------------------------

def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


async def test_metrics_with_basic_auth_shows_polls_per_bus_and_alerts_by_state(site):
    await until(lambda: site.gw.summary()["polls"] >= 2, "polls")
    async with site.session() as s:
        async with s.get("/metrics") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        async with s.get("/metrics", auth=aiohttp.BasicAuth(USERS["guard"], "not it")) as r:
            assert r.status == 401
        for role in ROLES:                              # every role may see the health figures
            async with s.get("/metrics", auth=aiohttp.BasicAuth(USERS[role], PASSWORDS[role])) as r:
                assert r.status == 200, role
                assert r.headers["content-type"].startswith("text/plain")
                text = await r.text()
        ledger = {(st, sev): n for st, sev, n in site.ledger_rows(
            "SELECT state, severity, count(*) FROM alerts WHERE state != 'cleared' GROUP BY state, severity")}
    samples = _samples(text)
    polls = samples[("gateway_polls_total", frozenset({("bus", "b")}))]
    assert polls >= 2
    assert polls <= site.gw.summary()["polls"]
    for state in ("active", "acknowledged"):
        for sev in ("critical", "warning", "info"):
            key = ("gateway_alerts", frozenset({("state", state), ("severity", sev)}))
            assert samples[key] == ledger.get((state, sev), 0), (state, sev)
    assert sum(v for (name, _), v in samples.items() if name == "gateway_alerts") >= 1


async def test_healthz_is_open_and_says_nothing_secret(site):
    async with site.session() as s:
        async with s.get("/healthz") as r:
            assert r.status == 200
            assert not r.headers.getall("Set-Cookie", [])
            body = await r.text()
    doc = json.loads(body)
    assert doc["status"] == "ok"
    assert set(doc) <= {"status", "uptime_s", "gateway", "ledger"}, doc
    secrets = [site.gw.web.session_key, str(site.ledger_path), str(site.tmp), "argon2", *USERS.values(),
               *PASSWORDS.values(), *(u.password_hash for u in site.cfg.users)]
    assert not [x for x in secrets if x and x in body], body


# ---- security headers and redirects -------------------------------------------------------------

async def test_every_response_carries_the_security_headers(site):
    async with site.session() as s:
        await login(s, "admin")
        seen = {}
        for path in ("/login", "/alarms", "/api/alarms", "/meters", "/health", "/nowhere", "/static/app.js",
                     "/static/app.css"):
            async with s.get(path, allow_redirects=False) as r:
                await r.read()
                seen[path] = r.headers
        async with s.get("/events") as r:                      # the live stream: headers only
            seen["/events"] = r.headers
    for path, h in seen.items():
        csp = {d.split()[0]: d.split()[1:] for d in h.get("Content-Security-Policy", "").split(";") if d.strip()}
        assert csp.get("script-src") == ["'self'"] and csp.get("default-src") == ["'self'"], (path, csp)
        assert csp.get("frame-ancestors") == ["'none'"] and csp.get("base-uri") == ["'none'"], (path, csp)
        assert "'unsafe-inline'" not in h["Content-Security-Policy"], path
        assert h.get("X-Frame-Options") == "DENY", path
        assert h.get("X-Content-Type-Options") == "nosniff", path
        assert h.get("Referrer-Policy") == "same-origin", path
        if not path.startswith("/static/"):
            assert h.get("Cache-Control") == "no-store", path


def test_no_template_has_inline_script_style_or_event_handlers():
    """What the Content-Security-Policy forbids must not be in the pages in the first place."""
    here = ROOT / "gateway" / "web" / "templates"
    found = []
    for page in sorted(here.glob("*.html")):
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"<script\b([^>]*)>", text):
            if "src=" not in m.group(1) and 'type="application/json"' not in m.group(1):
                found.append((page.name, m.group(0)))
        found += [(page.name, m.group(0)) for m in re.finditer(r"\son[a-z]+\s*=|\sstyle\s*=|<style\b|javascript:",
                                                                 text)]
    assert not found, found


@pytest.mark.parametrize("referer,target", [
    ("https://evil.example/phish", "/"),
    ("{url}/meters?x=1", "/meters?x=1"),
    ("{url}/alarms/history", "/alarms/history"),
    ("{url}//evil.example/phish", "/"),
    ("{url}/\\evil.example/phish", "/"),
    ("http://evil.example{path}", "/"),
    ("not a url", "/"),
    ("", "/"),
])
async def test_the_language_switch_goes_back_only_to_a_page_of_ours(site, referer, target):
    url = site.url
    referer = referer.format(url=url, path=urlsplit(url).path + "/alarms")
    async with site.session() as s:
        async with s.get("/lang/en", headers={"Referer": referer} if referer else {}, allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["location"] == target, (referer, r.headers["location"])
            assert "lang=en" in r.headers.get("Set-Cookie", "")


@pytest.mark.parametrize("next_", ["/\\evil.example/x", "/\t/evil.example/x", "https://evil.example/x", "//evil.example"])
async def test_the_login_does_not_follow_next_to_another_site(site, next_):
    async with site.session() as s:
        token = await page_csrf(s)
        async with s.post("/login", data={"user": USERS["guard"], "password": PASSWORDS["guard"], "csrf": token,
                                          "next": next_}, allow_redirects=False) as r:
            assert (r.status, r.headers["location"]) == (303, HOME["guard"])
