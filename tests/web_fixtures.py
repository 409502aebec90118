"""What the console's tests (test_web_browser.py, test_web_security.py) and bench/web.py share:
users of every role, a running gateway with its console on loopback, logging in over HTTP.

`example_site()` runs the reference site as `gateway demo` does (SiteSimulation + FieldSimulation,
the patched site file, a ledger in a temporary directory, no InfluxDB) with the console on a free
port and one user per role; `small_site()` is two simulated meters with an alarm that is raised
at once, for tests that need a console but not a whole estate. Both run `Gateway.run()` as a task
of the caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import sqlite3
import ssl
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SITE = ROOT / "edge_config" / "site.example.yaml"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"        # Debian's chromium: Playwright never downloads a browser

ROLES = ("guard", "electrician", "accountant", "admin")
USERS = {"guard": "wang-guard", "electrician": "zhang-elec", "accountant": "li-acct", "admin": "chen-admin"}
PASSWORDS = {role: f"{role}-Pw-7c1e" for role in ROLES}
PAGES = ("alarms", "orders", "meters", "patrol", "access", "lighting", "inspections", "equipment", "shift",
         "service", "allocation", "health")
# What each role may see (the console's contract, written down here on its own so that a change
# of gateway/web/auth.py that shows a page to the wrong role fails the tests).
ROLE_PAGES = {
    "guard": ("alarms", "orders", "patrol", "access", "lighting", "equipment", "shift", "health"),
    "electrician": ("alarms", "orders", "meters", "patrol", "access", "lighting", "inspections", "equipment",
                    "health"),
    "accountant": ("allocation", "health"),
    "admin": PAGES,
}
HOME = {"guard": "/alarms", "electrician": "/alarms", "accountant": "/allocation", "admin": "/alarms"}
METER_KINDS = ("threshold", "offline", "counter", "daylight", "consumption")   # acked by electrician/admin

CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]*)"')
SITE_INFO = {"id": "wanhu", "name": "万户新居", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83}


@functools.cache
def user_entries() -> tuple[dict, ...]:
    """One site-file user per role (argon2 is slow on purpose: hashed once per process)."""
    from gateway.web.auth import hash_password
    return tuple({"name": USERS[r], "role": r, "password_hash": hash_password(PASSWORDS[r])} for r in ROLES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Console:
    """A running gateway with its console."""

    gw: Any                                  # gateway.runtime.Gateway
    task: asyncio.Task
    url: str
    tmp: Path
    ca: Path | None = None                   # the CA of the console's certificate (TLS)
    sim: Any = None                          # simulators.site.SiteSimulation
    field_sim: Any = None                    # simulators.field_site.FieldSimulation
    allocation: dict[str, Path] = field(default_factory=dict)   # kind -> file of the generated month
    month: str | None = None

    @property
    def cfg(self):
        return self.gw.cfg

    @property
    def ledger_path(self) -> Path:
        return self.gw.cfg.storage_path

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca else None

    def session(self, local_addr: str | None = None) -> aiohttp.ClientSession:
        """A client with its own cookie jar (unsafe: cookies of an IP address), optionally
        connecting from another loopback address (127.0.0.2 ...: the throttle's `address`)."""
        conn = aiohttp.TCPConnector(ssl=self.ssl_context() or False,
                                    local_addr=(local_addr, 0) if local_addr else None, force_close=False)
        return aiohttp.ClientSession(self.url, connector=conn, cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     timeout=aiohttp.ClientTimeout(total=30))

    def ledger_rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        con = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    async def stop(self) -> None:
        self.gw.stop()
        try:
            await asyncio.wait_for(self.task, 20)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def until(cond, what: str, timeout: float = 20.0, every: float = 0.05):
    """Wait for cond() to be true (its value is returned); a wait, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


async def start_gateway(data: dict, base_dir: Path, tmp: Path, ca: Path | None = None) -> Console:
    """Run `Gateway(parse_site(data)).run()` as a task; return once the console answers /healthz."""
    from gateway.config import parse_site
    from gateway.runtime import Gateway

    gw = Gateway(parse_site(data, base_dir=base_dir))
    task = asyncio.create_task(gw.run(status_every_s=None, grace_s=1), name="gateway")
    try:
        await until(lambda: gw.web_address is not None or task.done(), "the console to listen", 30)
        if task.done():
            task.result()
            raise AssertionError("the gateway stopped at once")
        host, port = gw.web_address
        scheme = "https" if data.get("web", {}).get("tls_cert") else "http"
        console = Console(gw, task, f"{scheme}://{host}:{port}", tmp, ca)
        deadline = time.monotonic() + 30
        async with console.session() as s:
            while True:
                try:
                    async with s.get("/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if task.done() or time.monotonic() > deadline:
                    raise AssertionError("the console does not answer /healthz")
                await asyncio.sleep(0.05)
        return console
    except BaseException:
        gw.stop()
        await asyncio.gather(task, return_exceptions=True)
        raise


def web_section(tls: tuple[Path, Path] | None = None) -> dict:
    web = {"bind": "127.0.0.1", "port": free_port()}
    if tls:
        web.update(tls_cert=str(tls[0]), tls_key=str(tls[1]))
    return web


# ---- the allocation of a past month -----------------------------------------------------------

def allocate_month(site_data: dict, base_dir: Path, tmp: Path, month: str) -> tuple[Path, dict[str, Path]]:
    """Generate `month` of readings for the site's meters (simulators.month) and allocate it
    (gateway.billing.monthly.run_month) in a ledger of its own: (that ledger, files by kind).

    A ledger of its own because the generated counters are not the live simulators' counters:
    in the console's ledger they would be the counter rule's baselines, and every live meter
    would raise a 'counter jump' alarm at its first poll."""
    from gateway.billing.monthly import run_month
    from gateway.config import parse_site
    from simulators.month import generate_month
    from gateway.billing.tariffs import plan_month

    data = {k: v for k, v in site_data.items() if k not in ("influxdb", "web", "users")}
    data["storage"] = {**data.get("storage", {}), "path": str(tmp / "month.db")}
    cfg = parse_site(data, base_dir=base_dir)
    generate_month(cfg, cfg.storage_path, month, seed=1, every_s=3600)
    # The generated month is complete, so it is allocated as a day after its end would be (by the
    # real clock it may still be inside the minutes a month waits for its closing readings).
    end = plan_month(month, cfg.site.timezone, cfg.tariffs).end
    run = run_month(cfg, month, tmp / "allocation", now=end + timedelta(days=1))
    return cfg.storage_path, dict(run.files)


def copy_allocations(source_db: Path, ledger_db: Path) -> int:
    """The allocation runs of `source_db` into `ledger_db` (what `gateway allocate` leaves in a
    ledger: the run with its out_dir, its charges, its result to print it again and its
    sign-offs); returns the number of runs."""
    from gateway.ledger import Ledger
    Ledger(ledger_db).close()                    # the schema
    con = sqlite3.connect(ledger_db)
    try:
        con.execute("ATTACH DATABASE ? AS month", (str(source_db),))
        with con:
            n = con.execute("INSERT INTO main.allocations SELECT * FROM month.allocations").rowcount
            con.execute("INSERT INTO main.allocation_charges SELECT * FROM month.allocation_charges")
            con.execute("INSERT INTO main.allocation_results SELECT * FROM month.allocation_results")
            con.execute("INSERT INTO main.allocation_signoffs SELECT * FROM month.allocation_signoffs")
        con.execute("DETACH DATABASE month")
        return n
    finally:
        con.close()


# ---- the sites --------------------------------------------------------------------------------

def example_site_data(sim, field_sim, tmp: Path, fast_meters: tuple[str, ...] = ()) -> dict:
    """The example site as `gateway demo` runs it, with the console and users of every role."""
    return console_data(field_sim.overrides(sim.patched_config().model_dump(mode="json")), tmp, fast_meters)


def console_data(data: dict, tmp: Path, fast_meters: tuple[str, ...] = ()) -> dict:
    """A site's data (pointed at simulators) as the demo runs it: the ledger in `tmp`, no InfluxDB;
    with the console on a free loopback port and one user per role."""
    data["storage"]["path"] = str((tmp / "gateway.db").resolve())
    data.pop("influxdb", None)
    data["web"] = web_section()
    data["users"] = [dict(u) for u in user_entries()]
    for m in data["meters"]:
        if m["id"] in fast_meters:
            m["poll_s"] = 1
    return data


@contextlib.asynccontextmanager
async def example_site(tmp: Path, *, fast_meters: tuple[str, ...] = (), month: str | None = None,
                       history_s: float = 900.0) -> AsyncIterator[Console]:
    """The reference site's 145 meters, card readers, doors and patrol, simulated; the gateway
    with its console. `fast_meters` are polled every second (their faults show in seconds);
    `month` ("2026-11") is generated and allocated first, and the run put in the ledger."""
    from gateway.config import load_site
    from simulators.field_site import FieldSimulation
    from simulators.site import SiteSimulation

    cfg = load_site(EXAMPLE_SITE)
    allocation: dict[str, Path] = {}
    if month is not None:
        month_db, allocation = await asyncio.to_thread(
            allocate_month, cfg.model_dump(mode="json", exclude_none=True), cfg.base_dir, tmp, month)
    sim = SiteSimulation(cfg)
    field_sim = FieldSimulation(cfg, history_s=history_s)
    await sim.start()
    console = None
    try:
        await field_sim.start()
        data = example_site_data(sim, field_sim, tmp, fast_meters)
        if month is not None:
            copy_allocations(month_db, Path(data["storage"]["path"]))
        console = await start_gateway(data, cfg.base_dir, tmp)
        console.sim, console.field_sim, console.allocation, console.month = sim, field_sim, allocation, month
        yield console
    finally:
        if console is not None:
            await console.stop()
        await field_sim.stop()
        await sim.stop()


SMALL_RULES = [
    # the simulated supply sits near 220 V: a 200 V limit is crossed at the first reading
    {"id": "voltage-test", "kind": "threshold", "field": "voltage_v", "above": 200, "hysteresis": 1,
     "severity": "critical", "meters": ["B01-stair"]},
    {"id": "offline", "kind": "offline", "periods": 2, "settle_periods": 0, "severity": "warning"},
]


@contextlib.asynccontextmanager
async def small_site(tmp: Path, *, tls: bool = False) -> AsyncIterator[Console]:
    """Two simulated meters polled every second, one alarm raised at once (voltage-test, a meter
    alarm), the console (over TLS with a throw-away CA when `tls`)."""
    from gateway.config import parse_site
    from simulators.site import SiteSimulation

    ca = None
    tls_files = None
    if tls:
        from servers import make_tls
        ca, cert, key = make_tls(tmp)
        tls_files = (cert, key)
    meters = [{"id": f"B0{u}-stair", "name": f"{u}号楼楼道照明", "bus": "b", "unit": u, "model": "chint-ddsu666",
               "poll_s": 1, "circuit": "stairwell_lighting", "building": f"B0{u}"} for u in (1, 2)]
    data = {"site": SITE_INFO, "storage": {"path": str(tmp / "gw.db"), "commit_interval_s": 0.2},
            "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.2}],
            "meters": meters, "rules": SMALL_RULES}
    sim = SiteSimulation(parse_site(data, base_dir=tmp))
    await sim.start()
    console = None
    try:
        patched = sim.patched_config().model_dump(mode="json")
        patched["web"] = web_section(tls=tls_files)
        patched["users"] = [dict(u) for u in user_entries()]
        console = await start_gateway(patched, tmp, tmp, ca)
        console.sim = sim
        yield console
    finally:
        if console is not None:
            await console.stop()
        await sim.stop()


# ---- logging in over HTTP ---------------------------------------------------------------------

async def page_csrf(session: aiohttp.ClientSession, path: str = "/login") -> str:
    """The session's CSRF token, as a page shows it (the login page gives one to anybody)."""
    async with session.get(path) as r:
        m = CSRF_META.search(await r.text())
    assert m, f"no csrf-token meta on {path}"
    return m.group(1)


async def post_login(session: aiohttp.ClientSession, name: str, password: str,
                     csrf: str | None = None) -> aiohttp.ClientResponse:
    """POST /login (the CSRF token of the session's login page unless given); the response is
    read and released."""
    token = csrf if csrf is not None else await page_csrf(session)
    async with session.post("/login", data={"user": name, "password": password, "csrf": token},
                            allow_redirects=False) as r:
        await r.read()
        return r


async def login(session: aiohttp.ClientSession, role: str) -> str:
    """Log in as the role's user; returns the logged-in session's CSRF token."""
    r = await post_login(session, USERS[role], PASSWORDS[role])
    assert r.status == 303, f"login as {role}: {r.status}"
    return await page_csrf(session)
