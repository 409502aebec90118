"""The console's defences, against the real server over loopback (no browser): logins required,
roles, CSRF tokens, login throttling, session cookies, /metrics and /healthz.

The gateway runs a small simulated site (two meters, an alarm raised at once: tests/web_fixtures.py)
in the module's event loop; clients are aiohttp sessions with their own cookie jars, some of them
connecting from other loopback addresses (127.0.0.2 ...) to be other clients to the throttle.
"""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import urlsplit

import aiohttp
import itsdangerous
import pytest
import pytest_asyncio
from starlette.routing import Mount, Route

from gateway.web.app import create_app
from gateway.web.auth import LoginThrottle
from web_fixtures import (HOME, PAGES, PASSWORDS, ROLE_PAGES, ROLES, USERS, login, page_csrf, post_login,
                          small_site, until)

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
    t.succeeded("zhao")
    assert t.wait_s("zhao", "10.0.2.1") == 0


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


async def test_a_cookie_signed_with_another_key_is_refused(site):
    session = {"user": USERS["admin"], "csrf": "t" * 32}
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
    async with site.session() as s:                     # a real cookie with its payload changed
        r = await post_login(s, USERS["guard"], PASSWORDS["guard"])
        value = _session_cookie(r)[""]
        _, _, stamp_and_signature = value.partition(".")    # payload.timestamp.signature
        forged = base64.b64encode(json.dumps(session).encode()).decode() + "." + stamp_and_signature
        s.cookie_jar.clear()
        s.cookie_jar.update_cookies({"estate_session": forged})
        async with s.get("/api/alarms") as r:
            assert r.status == 401


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
