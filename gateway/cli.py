"""The `gateway` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from .config import ConfigError, SiteConfig, load_site
from .meter_models import SHIPPED_MODELS_DIR

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="estate-gateway: public meters, access, patrol and alarms for a residential compound.")

EXAMPLE_SITE = SHIPPED_MODELS_DIR.parent / "site.example.yaml"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    # pymodbus reports every timeout and reconnect itself; the driver says it once, with context.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _load(path: Path) -> SiteConfig:
    try:
        return load_site(path)
    except ConfigError as e:
        for p in e.problems:
            typer.echo(f"{e.source}: {p}" if not p.startswith(e.source) else p, err=True)
        typer.echo(f"{len(e.problems)} problem(s) in {e.source}", err=True)
        raise typer.Exit(2) from None


def _run_until_signal(main) -> None:
    """Run `main(stop_event)`; SIGINT/SIGTERM set the event (finish in flight, flush, exit 0)."""
    async def runner():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


async def _gateway_until(gw, stop: asyncio.Event, seconds: float | None) -> None:
    from .ledger import LedgerError
    task = asyncio.create_task(gw.run(status_every_s=60 if seconds is None else min(10.0, seconds)))
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    gw.stop()
    waiter.cancel()
    try:
        await task
    except LedgerError as e:
        raise fail(str(e)) from None


@app.command("check-config")
def check_config(file: Path = typer.Argument(..., help="site file (YAML)")) -> None:
    """Validate a site file and its households file: exit 0 with a summary, or 2 with every problem
    and where it is. Likely mistakes that are allowed (an implausible price) are warnings."""
    from collections import Counter

    from .config import site_warnings
    cfg = _load(file)
    households = _check_households(cfg, file)
    models = sorted({m.model for m in cfg.meters})
    typer.echo(f"OK {file}: site {cfg.site.id} ({cfg.site.name}), {len(cfg.buses)} buses, "
               f"{len(cfg.meters)} meters ({len(models)} models: {', '.join(models)}), "
               f"ledger {cfg.storage_path}")
    if cfg.rules:
        typer.echo(f"  rules: {len(cfg.rules)} ({', '.join(sorted({r.kind for r in cfg.rules}))})")
    if cfg.card_readers or cfg.doors or cfg.patrol.readers:
        p = cfg.patrol
        typer.echo(f"  access: {len(cfg.card_readers)} card readers, {len(cfg.doors)} doors; patrol: "
                   f"{len(p.checkpoints)} checkpoints, {len(p.routes)} routes, {len(p.readers)} readers")
    if cfg.outputs or cfg.lighting.circuits:
        typer.echo(f"  lighting: {len(cfg.outputs)} outputs, {len(cfg.lighting.circuits)} circuits, "
                   f"{len(cfg.lighting.schedules)} schedules")
    if households is not None:
        homes, groups = households
        typer.echo(f"  households: {len(homes)} in {cfg.allocation.households_file} "
                   f"({len({h.building for h in homes})} buildings, {sum(h.occupied for h in homes)} occupied); "
                   f"{groups} allocation groups")
    for w in site_warnings(cfg):
        typer.echo(f"warning: {file}: {w}", err=True)
    per_bus = Counter(m.bus for m in cfg.meters)  # one pass: a count per bus would be buses x meters
    for b in cfg.buses:
        n = per_bus[b.id]
        where = f"{b.host}:{b.port}" if b.type == "modbus_tcp" else f"{b.port} {b.baudrate} {b.bytesize}{b.parity}{b.stopbits}"
        typer.echo(f"  {b.id:<12} {b.type:<11} {where:<28} {n} meters")


def _check_households(cfg: SiteConfig, file: Path):
    """The households file of a site that allocates, checked against the site, and the groups it
    makes: (households, group count), None when the site allocates nothing; exit 2 with every
    problem, as for the site file."""
    from .billing.allocate import plan_groups
    from .billing.households import HouseholdsError, site_households, uses_households
    if not uses_households(cfg):
        return None
    try:
        homes = site_households(cfg)
    except HouseholdsError as e:
        for p in e.problems:
            typer.echo(p, err=True)
        typer.echo(f"{e.count} problem(s) in {cfg.base_dir / cfg.allocation.households_file} "
                   f"(allocation.households_file of {file})", err=True)
        raise typer.Exit(2) from None
    groups, problems = plan_groups(cfg, homes)
    if problems:
        for p in problems:
            typer.echo(f"{file}: {p}", err=True)
        typer.echo(f"{len(problems)} problem(s) in the allocation groups of {file} with its households", err=True)
        raise typer.Exit(2)
    return homes, len(groups)


@app.command()
def run(config: Path = typer.Option(..., "-c", "--config", help="site file"),
        record: Optional[Path] = typer.Option(None, "--record", help="also write the raw device traffic here (JSON lines)"),
        verbose: bool = typer.Option(False, "-v", "--verbose")) -> None:
    """Poll every meter of the site into the ledger until SIGINT/SIGTERM; SIGHUP reloads the site file."""
    from .config import missing_env, site_warnings
    from .runtime import Gateway
    cfg = _load(config)
    for problem in missing_env(cfg):
        typer.echo(f"{config}: {problem}", err=True)
    if missing_env(cfg):
        raise typer.Exit(2)
    for w in site_warnings(cfg):          # after what stops it: a refusal stays one line
        typer.echo(f"warning: {config}: {w}", err=True)
    setup_logging(verbose)
    from .service import run_service
    from .ledger import LedgerError

    async def main(stop: asyncio.Event) -> None:
        try:
            await run_service(config, cfg, stop, lambda c: Gateway(c, record=record))
        except LedgerError as e:
            raise fail(str(e)) from None
    _run_until_signal(main)


@app.command()
def demo(seconds: Optional[float] = typer.Option(None, "--seconds", help="stop after N seconds (default: Ctrl-C)"),
         data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="keep the ledger here (default: a temporary directory)"),
         site: Path = typer.Option(EXAMPLE_SITE, "--site", help="site file to simulate"),
         line_speed: bool = typer.Option(False, "--line-speed", help="emulate RS-485 line timing"),
         month: Optional[str] = typer.Option(None, "--month", help="instead: generate this month's readings "
                                             "(e.g. 2026-10) and allocate it"),
         seed: int = typer.Option(1, "--seed", help="with --month: the generator's seed"),
         every: int = typer.Option(300, "--every", help="with --month: seconds between readings (60 = the real rate)"),
         bill: Optional[str] = typer.Option(None, "--bill", help="with --month: the utility bill, yuan"),
         allow_partial: bool = typer.Option(False, "--allow-partial", help="with --month: allocate a month that is "
                                            "not over yet"),
         force: bool = typer.Option(False, "--force", help="with --month: allocate a bill far from the metered "
                                    "cost")) -> None:
    """Simulate the example site's meters and run the gateway against them (no hardware, no servers);
    with --month, generate a month of readings and allocate it."""
    from .runtime import Gateway
    from simulators.site import SiteSimulation

    cfg = _load(site)
    if month is not None:
        _demo_month(cfg, month, seed, every, bill, data_dir, allow_partial, force)
        return
    setup_logging()
    from .identity import EXAMPLE_SITE_ID
    if cfg.site.id == EXAMPLE_SITE_ID:
        typer.echo(f"note: '{EXAMPLE_SITE_ID}' is the example site's id; a real estate's site file needs its own "
                   f"site.id (head office tells estates apart by it)", err=True)
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gateway-demo-")
        data_dir = Path(tmp.name)
    result: dict = {}

    async def main(stop: asyncio.Event) -> None:
        from .config import parse_site
        from .console import LiveView

        from simulators.field_site import FieldSimulation

        sim = SiteSimulation(cfg, line_speed=line_speed)
        field = FieldSimulation(cfg)
        await sim.start()
        await field.start()
        try:
            data = field.overrides(sim.patched_config().model_dump(mode="json"))
            data["storage"]["path"] = str((data_dir / "gateway.db").resolve())
            data.pop("influxdb", None)  # the demo needs no server
            user, password, port = _demo_user()
            data["web"] = {**data.get("web", {}), "bind": "127.0.0.1", "port": port}
            gw = Gateway(parse_site(data, base_dir=cfg.base_dir), web_users=[user])
            typer.echo(f"console: http://127.0.0.1:{port}/  user {user.name}  password {password}  (admin, this demo only)")
            view = LiveView(gw)
            follow = asyncio.create_task(view.follow())
            try:
                await _gateway_until(gw, stop, seconds)
            finally:
                follow.cancel()
            view.console.print(view.table())
            for line in view.alarm_lines():
                view.console.print(line, highlight=False, soft_wrap=True)
            result.update(gw.summary(), ledger=str(gw.cfg.storage_path))
        finally:
            await field.stop()
            await sim.stop()

    try:
        _run_until_signal(main)
    finally:
        if result:
            typer.echo(f"demo: polled {result['polled']} of {result['meters']} meters on {result['buses']} buses, "
                       f"{result['readings_stored']} readings stored, {result['offline']} offline"
                       + ("" if tmp else f" (ledger {result['ledger']})"))
        if tmp:
            tmp.cleanup()


def _demo_user():
    """A throw-away admin for the demo's console, and a free port for it (8080 if free)."""
    import secrets
    import socket

    from .config import User
    from .web.auth import hash_password
    password = secrets.token_urlsafe(9)
    port = 8080
    for candidate in [8080, 8081, 8088, 0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port = s.getsockname()[1]
            break
    return User(name="demo", role="admin", password_hash=hash_password(password)), password, port


def _demo_month(cfg: SiteConfig, month: str, seed: int, every: int, bill: Optional[str], data_dir: Optional[Path],
                allow_partial: bool, force: bool) -> None:
    from datetime import datetime, timezone

    from .billing.allocate import AllocationError, parse_bill, unfinished
    from .billing.monthly import run_month
    from .billing.tariffs import TariffError, plan_month
    from .config import parse_site
    from simulators.month import generate_month

    data_dir = data_dir or Path("demo-month")
    db = (data_dir / "gateway.db").resolve()
    if db.exists():
        raise fail(f"{db} exists: give another --data-dir, or remove it to generate the month again", 2)
    try:   # what would refuse the month is said before a minute of generating it
        amount = parse_bill(bill)
        why = unfinished(cfg, plan_month(month, cfg.site.timezone, cfg.tariffs), datetime.now(timezone.utc))
    except AllocationError as e:
        raise fail(e.problems[0], 2) from None
    except TariffError as e:
        raise fail(str(e), 2) from None
    if why and not allow_partial:
        raise fail(f"{why}: give --allow-partial to allocate it anyway", 2)
    data = cfg.model_dump(mode="json", exclude_none=True)
    data["storage"]["path"] = str(db)
    data.pop("influxdb", None)
    site = parse_site(data, base_dir=cfg.base_dir)
    typer.echo(f"generating {month} for {cfg.site.name}: {len(cfg.meters)} meters every {every} s (seed {seed}) ...")
    try:
        truth = generate_month(site, db, month, seed=seed, every_s=every)
        typer.echo(truth.line())
        for f in truth.faults:
            typer.echo(f"  planted: {f.kind} on {f.meter}: {f.detail}")
        run = run_month(site, month, data_dir / "allocation", amount, allow_partial=allow_partial, force=force,
                        by="gateway demo")
    except AllocationError as e:
        for line in e.problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    except (TariffError, ValueError) as e:
        raise fail(str(e), 2) from None
    r = run.result
    _waived(r)
    typer.echo(f"allocated: {sum(m.kwh for m in r.meters):.2f} kWh, metered cost {r.metered_cost:.2f} yuan, "
               f"recovered {r.recovered} from {len(r.households)} households; {len(r.quality)} data-quality notes")
    for kind, path in run.files.items():
        typer.echo(f"{kind:<5} {path}")
    typer.echo(f"ledger {db}: try `gateway allocate -c SITE --month {month}` with storage.path pointing at it")


def _waived(result) -> None:
    """The checks an allocation was told to override, one warning line each."""
    for _, en in result.waived:
        typer.echo(f"warning: {en}", err=True)


@app.command()
def read(meter: str = typer.Argument(..., help="meter id from the site file"),
         config: Path = typer.Option(..., "-c", "--config", help="site file"),
         as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Poll one meter once and print what it says (Modbus or DL/T 645)."""
    from .drivers.dlt645 import Dlt645Bus
    from .drivers.modbus import ModbusBus

    cfg = _load(config)
    setup_logging()
    logging.getLogger("gateway").setLevel(logging.ERROR)
    try:
        m = cfg.meter(meter)
    except StopIteration:
        raise fail(f"no meter '{meter}' in {config} (meters: {', '.join(x.id for x in cfg.meters[:8])}"
                   f"{', ...' if len(cfg.meters) > 8 else ''})", 2) from None
    model = cfg.models[m.model]

    async def once():
        bus_cfg = cfg.bus(m.bus)
        bus = (Dlt645Bus if bus_cfg.type == "dlt645" else ModbusBus)(bus_cfg, [(m, model)], lambda e: None)
        try:
            return bus, await bus.poll(bus.meters[0])
        finally:
            await bus.close()

    bus, reading = asyncio.run(once())
    st = bus.meters[0]
    if reading is None:
        raise fail(f"meter {m.id} (bus {m.bus} at {bus.where}, {m.bus_address}): {st.last_error}")
    if as_json:
        typer.echo(json.dumps({"meter": m.id, "ts": reading.ts.isoformat(), "values": reading.values,
                               "counters": {k: str(v) for k, v in reading.counters.items()}},
                              ensure_ascii=False, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"{m.id} {m.name} — {model.name}, bus {m.bus} {m.bus_address}, {reading.ts:%Y-%m-%d %H:%M:%S} UTC")
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_column("unit")
    for f in model.fields:
        if f.name in reading.values:
            v = reading.counters.get(f.name, reading.values[f.name])
            table.add_row(f.name, f"{v}" if f.name in reading.counters else f"{v:.4g}", f.unit)
    Console().print(table)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"


@app.command()
def status(config: Path = typer.Option(..., "-c", "--config", help="site file"),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Buses, meters online/offline, outbox depth and age, last write to InfluxDB (from the ledger)."""
    from rich.console import Console
    from rich.table import Table

    from .status import NoLedger, collect

    cfg = _load(config)
    try:
        st = collect(cfg)
    except NoLedger as e:
        raise fail(str(e)) from None
    if as_json:
        typer.echo(json.dumps(st, ensure_ascii=False, indent=2))
        return
    console = Console()
    table = Table(title=f"{cfg.site.name} ({cfg.site.id}) — ledger {st['ledger']}")
    for col in ("bus", "where", "link", "meters", "online", "offline", "last reading"):
        table.add_column(col)
    for b in st["buses"]:
        link = {True: "ok", False: "[red]down[/red]", None: "-"}[b["connected"]]
        table.add_row(b["id"], b["where"], link, str(b["meters"]), str(b["online"]),
                      f"[red]{len(b['offline'])}[/red]" if b["offline"] else "0", _age(b["last_reading_age_s"]))
    console.print(table)
    for b in st["buses"]:
        for m in b["offline"]:
            console.print(f"  offline: {m['meter']} (bus {b['id']}) since {m['since']}: {m['reason']}", highlight=False)
    o = st["outbox"]
    if st["influxdb"]:
        console.print(f"InfluxDB {st['influxdb']}: outbox {o['depth']} points ({o['bytes'] / 1e6:.1f} MB), "
                      f"oldest {_age(o['oldest_age_s'])}; last successful write {_age(o['last_write_age_s'])}; "
                      f"{o['rejected']} points set aside as bad data", highlight=False)
    else:
        console.print("InfluxDB: not configured (the ledger alone keeps the readings)")
    clock = st.get("clock") or {}
    if clock.get("untrusted_now"):
        console.print("[red]clock: not trusted now[/red]: what is recorded waits for the clock to be set", highlight=False)
    for e in clock.get("unrepaired", []):
        rows = sum(e["rows"].values())
        console.print(f"clock episode {e['id']} ({e['state']}, {e['reason']}): {rows} rows, {e['points_held']} points "
                      f"held; the clock said {e['clock_said'][0]} … {e['clock_said'][1]}", highlight=False)


alarms_app = typer.Typer(help="Alarms: list the open ones, acknowledge, look back.", no_args_is_help=True)
app.add_typer(alarms_app, name="alarms")


def _ledger_ro(cfg: SiteConfig):
    from .ledger.queries import connect_read_only
    path = cfg.storage_path
    if not path.exists():
        raise fail(f"no ledger at {path} yet: has `gateway run -c ...` been started with this site file?")
    return connect_read_only(path)


def _local(us: int | None, cfg: SiteConfig) -> str:
    from zoneinfo import ZoneInfo

    from .clock import from_us
    return from_us(us).astimezone(ZoneInfo(cfg.site.timezone)).strftime("%m-%d %H:%M:%S") if us else ""


@alarms_app.command("list")
def alarms_list(config: Path = typer.Option(..., "-c", "--config", help="site file"),
                as_json: bool = typer.Option(False, "--json"),
                english: bool = typer.Option(False, "--en", help="English messages")) -> None:
    """Open alarms (active and acknowledged), newest first."""
    cfg = _load(config)
    from .ledger.queries import open_alerts
    db = _ledger_ro(cfg)
    keys = ("id", "severity", "state", "message", "message_en", "raised_us", "acked_by")
    rows = [tuple(a[k] for k in keys) for a in open_alerts(db)]
    db.close()
    if as_json:
        typer.echo(json.dumps([dict(zip(keys, r)) for r in rows], ensure_ascii=False, indent=2))
        return
    if not rows:
        typer.echo("no open alarms" if english else "没有未关闭的告警 (no open alarms)")
        return
    for aid, sev, state, msg, msg_en, raised, by in rows:
        ack = f" [{'acked by' if english else '已确认'} {by}]" if state == "acknowledged" else ""
        typer.echo(f"{_local(raised, cfg)}  {sev:<8} {msg_en if english else msg}{ack}\n    id {aid}")


@alarms_app.command("ack")
def alarms_ack(alert_id: str = typer.Argument(..., help="the alarm's id (from `alarms list`)"),
               by: str = typer.Option(..., "--by", help="who acknowledges"),
               note: str = typer.Option("", "--note", help="what was done or found"),
               config: Path = typer.Option(..., "-c", "--config", help="site file")) -> None:
    """Acknowledge an alarm; the running gateway applies it within a second."""
    import time as _time

    from .ledger.queries import alert_kind_state, request_ack
    cfg = _load(config)
    db = _ledger_ro(cfg)
    row = alert_kind_state(db, alert_id)
    db.close()
    if row is None:
        raise fail(f"no alarm with id {alert_id!r} (see `gateway alarms list -c {config}`)", 2)
    if row[1] == "cleared":
        raise fail(f"alarm {alert_id} is already cleared", 2)
    request_ack(cfg.storage_path, alert_id, by, note, int(_time.time() * 1e6))
    typer.echo(f"acknowledgement of {alert_id} by {by} recorded; the gateway applies it within a second")


@alarms_app.command("history")
def alarms_history(config: Path = typer.Option(..., "-c", "--config", help="site file"),
                   since: str = typer.Option("24h", "--since", help="e.g. 24h, 7d, or a date 2026-11-01"),
                   as_json: bool = typer.Option(False, "--json")) -> None:
    """Every change of every alarm since a time: raised, updated, acknowledged, cleared."""
    import re as _re
    from datetime import datetime as _dt, timedelta, timezone
    from zoneinfo import ZoneInfo

    from .clock import to_us
    cfg = _load(config)
    m = _re.fullmatch(r"(\d+)([hd])", since)
    try:
        start = (_dt.now(timezone.utc) - timedelta(**{"hours" if m.group(2) == "h" else "days": int(m.group(1))})
                 if m else _dt.fromisoformat(since).replace(tzinfo=ZoneInfo(cfg.site.timezone)))
    except ValueError:
        raise fail(f"--since {since!r}: expected e.g. 24h, 7d or 2026-11-01", 2) from None
    from .ledger.queries import alert_history
    db = _ledger_ro(cfg)
    keys = ("ts_us", "what", "state", "message", "id", "severity")
    rows = [tuple(h[k] for k in keys) for h in alert_history(db, to_us(start), newest_first=False)]
    db.close()
    if as_json:
        typer.echo(json.dumps([dict(zip(keys, r)) for r in rows], ensure_ascii=False, indent=2))
        return
    for ts, what, state, msg, aid, sev in rows:
        typer.echo(f"{_local(ts, cfg)}  {what:<12} {sev:<8} {msg}")


allocate_app = typer.Typer(help="Allocate a month's public electricity to the households (exact to the fen); "
                                "`approve` signs a run off, `runs` lists them.")
app.add_typer(allocate_app, name="allocate")


def _who() -> str:
    import getpass
    try:
        return getpass.getuser()
    except (KeyError, OSError):        # no login name for this uid (a container)
        return ""


@allocate_app.callback(invoke_without_command=True)
def allocate(ctx: typer.Context,
             config: Optional[Path] = typer.Option(None, "-c", "--config", help="site file"),
             month: Optional[str] = typer.Option(None, "--month", help="the month, e.g. 2026-10"),
             bill: Optional[str] = typer.Option(None, "--bill", help="the utility bill's total for the month, yuan"),
             out: Path = typer.Option(Path("allocation"), "--out", help="directory for the CSV, XLSX and HTML"),
             english: bool = typer.Option(False, "--en", help="reports in English"),
             dry_run: bool = typer.Option(False, "--dry-run", help="write the reports only, not the ledger"),
             allow_partial: bool = typer.Option(False, "--allow-partial", help="allocate a month that is not over, or "
                                                "whose counters cover less of it than allocation.min_coverage "
                                                "(said in the report)"),
             force: bool = typer.Option(False, "--force", help="allocate a bill further from the metered cost or the "
                                        "main meter than allocation.bill_tolerance, or with a price outside "
                                        "0.10–3.00 yuan/kWh (said in the report)"),
             by: Optional[str] = typer.Option(None, "--by", help="who prepares this run (default: your login name)"),
             invoice: Optional[str] = typer.Option(None, "--invoice", help="the utility bill's number"),
             bill_period: Optional[str] = typer.Option(None, "--bill-period", help="the utility bill's own period, "
                                                       "first and last day: 2026-10-03..2026-11-02")) -> None:
    """Allocate a month's public electricity to the households, exact to the fen, as a new run."""
    if ctx.invoked_subcommand is not None:
        return
    for name, value in (("-c/--config FILE", config), ("--month", month)):
        if value is None:
            raise fail(f"missing option {name}: gateway allocate -c FILE --month 2026-10 (see --help)", 2)
    from .billing.allocate import AllocationError, parse_bill
    from .billing.households import HouseholdsError
    from .billing.monthly import run_month
    from .billing.runs import RunError, check_bill_period, parse_bill_period
    from .billing.tariffs import TariffError
    from .ledger import LedgerError

    cfg = _load(config)
    if not cfg.storage_path.exists():
        raise fail(f"no ledger at {cfg.storage_path}: nothing has been read for this site yet", 2)
    who = (by if by is not None else _who()).strip()
    try:
        period = parse_bill_period(bill_period)
        check_bill_period(period, month)
        if by is not None and not who:
            raise RunError("--by: say who prepares the run (a name)")
        if invoice is not None and not invoice.strip():
            raise RunError("--invoice: give the bill's number, or leave the option out")
        run = run_month(cfg, month, out, parse_bill(bill), lang="en" if english else "zh", keep=not dry_run,
                        allow_partial=allow_partial, force=force, by=who,
                        invoice=invoice.strip() if invoice else None, bill_period=period)
    except (AllocationError, HouseholdsError) as e:
        for line in e.problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    except (TariffError, LedgerError, RunError) as e:
        raise fail(str(e), 2) from None
    r = run.result
    _waived(r)
    if r.placeholder_tariffs:
        typer.echo(f"warning: the tariffs {', '.join(r.placeholder_tariffs)} are placeholders (placeholder: true "
                   f"in the site file): the reports say these amounts must not be billed", err=True)
    kinds: dict[str, int] = {}
    for q in r.quality:
        kinds[q.kind] = kinds.get(q.kind, 0) + 1
    typer.echo(f"{r.site_name} {r.month}: {len(r.meters)} meters, {sum(m.kwh for m in r.meters):.2f} kWh, "
               f"metered cost {r.metered_cost:.2f} yuan" + (f", bill {r.bill} (difference {r.difference:+.2f})"
                                                             if r.bill is not None else ""))
    typer.echo(f"recovered {r.recovered} yuan from {len(r.households)} households in {len(r.groups)} groups")
    if kinds:
        typer.echo("data quality: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
    c = run.comparison
    if c is not None and c.run is not None:
        typer.echo(f"compared with {c.month} (run {c.run}, {'approved' if c.approved else 'a draft'}): "
                   f"{len(c.flagged_groups)} of {len(c.groups)} groups and {len(c.flagged_households)} of "
                   f"{len(c.households)} households changed by more than ±{(c.band * 100).normalize():f} %")
    elif c is not None:
        typer.echo(f"no allocation of {c.month} in the ledger to compare with")
    for kind, path in run.files.items():
        typer.echo(f"{kind:<5} {path}")
    if run.run_id is not None:
        typer.echo(f"kept in the ledger as allocation run {run.run_id}"
                   + (f"; {run.points} points queued for InfluxDB" if run.points else ""))
        p = run.published
        if p is not None:
            typer.echo(f"run {run.run_id} is the month's answer, a draft until approved"
                       + (f" (replacing run {p.previous}'s points: {p.removed} of them taken out of the outbox unsent"
                          + (f", {p.zeros} of its series set to zero" if p.zeros else "") + ")"
                          if p.previous is not None and p.previous != run.run_id and (p.removed or p.zeros) else ""))
        elif run.answer is not None and run.answer != run.run_id:
            typer.echo(f"run {run.answer} is approved and stays the month's answer until this one is approved: "
                       f"gateway allocate approve -c {config} --month {month} --run {run.run_id} --by NAME "
                       f"--role reviewed (then --role approved)")


@allocate_app.command("approve")
def allocate_approve(config: Path = typer.Option(..., "-c", "--config", help="site file"),
                     month: str = typer.Option(..., "--month", help="the run's month, e.g. 2026-10"),
                     run_id: int = typer.Option(..., "--run", help="the run's id (gateway allocate runs)"),
                     by: str = typer.Option(..., "--by", help="who signs"),
                     role: str = typer.Option("approved", "--role", help="reviewed (审核) or approved (批准); a run "
                                              "is reviewed before it is approved")) -> None:
    """Sign a run off as reviewed or approved (the month's answer; supersedes its older runs)."""
    from .billing.runs import RunError, sign
    from .ledger import Ledger, LedgerError

    cfg = _load(config)
    if not cfg.storage_path.exists():
        raise fail(f"no ledger at {cfg.storage_path}: nothing has been read for this site yet", 2)
    ledger = Ledger(cfg.storage_path)
    try:
        done = sign(cfg, ledger, run_id, role.strip().lower(), by, month=month)
    except (RunError, LedgerError) as e:
        raise fail(str(e), 2) from None
    finally:
        ledger.close()
    typer.echo(f"run {run_id} of {month} {role} by {by.strip()}")
    if done.superseded:
        typer.echo(f"superseded: run{'s' if len(done.superseded) > 1 else ''} "
                   f"{', '.join(str(x) for x in done.superseded)}")
    p = done.published
    if p is not None and p.previous != p.run:
        typer.echo(f"run {p.run} is the month's answer"
                   + (f": {p.queued} points queued for InfluxDB" if p.queued else "")
                   + (f", {p.removed} of run {p.previous}'s taken out of the outbox unsent" if p.removed else "")
                   + (f", {p.zeros} of its series set to zero" if p.zeros else ""))
    for kind, path in done.files.items():
        typer.echo(f"{kind:<5} {path}")
    for line in done.reprint_errors:
        typer.echo(f"warning: {line}", err=True)


@allocate_app.command("runs")
def allocate_runs(config: Path = typer.Option(..., "-c", "--config", help="site file"),
                  month: Optional[str] = typer.Option(None, "--month", help="only this month"),
                  as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The allocation runs and their state (prepared, reviewed, approved, superseded); * the month's answer."""
    from zoneinfo import ZoneInfo

    from .billing.runs import answer, runs
    from .ledger import Ledger, LedgerError

    cfg = _load(config)
    tz = ZoneInfo(cfg.site.timezone)
    if not cfg.storage_path.exists():
        raise fail(f"no ledger at {cfg.storage_path}: nothing has been read for this site yet", 2)
    try:
        ledger = Ledger(cfg.storage_path)       # brings an older ledger's schema up to date first
    except LedgerError as e:
        raise fail(str(e), 2) from None
    try:
        all_runs = runs(ledger, month)
    finally:
        ledger.close()
    answers = {}
    for m in {r.month for r in all_runs}:
        a = answer([r for r in all_runs if r.month == m])
        answers[m] = a.id if a else None

    def when(d) -> str:
        return d.astimezone(tz).strftime("%Y-%m-%d %H:%M")

    if as_json:
        typer.echo(json.dumps([{
            "id": r.id, "month": r.month, "state": r.state, "answer": answers[r.month] == r.id,
            "created": when(r.created), "by": r.by, "invoice": r.invoice,
            "bill_period": [d.isoformat() for d in r.bill_period] if r.bill_period else None,
            "bill": str(r.bill) if r.bill is not None else None, "recovered": str(r.recovered),
            "households": r.households, "superseded_by": r.superseded_by, "out_dir": str(r.out_dir),
            "signoffs": {role: {"by": by, "at": when(at)} for role, (by, at) in r.signoffs.items()}}
            for r in all_runs], ensure_ascii=False, indent=2))
        return
    if not all_runs:
        typer.echo("no allocation runs" + (f" of {month}" if month else "") + " in the ledger")
        return
    for r in sorted(all_runs, key=lambda r: (r.month, r.id)):
        mark = "*" if answers[r.month] == r.id else " "
        state = r.state + (f" by run {r.superseded_by}" if r.superseded_by else "")
        signed = "; ".join(f"{role} by {by} {when(at)}" for role, (by, at) in
                           sorted(r.signoffs.items(), key=lambda kv: kv[1][1]))
        bill = f"bill {r.bill}" if r.bill is not None else "no bill"
        typer.echo(f"{mark} {r.month}  run {r.id:<4} {state:<22} {when(r.created)} by {r.by or '?':<10} {bill}, "
                   f"recovered {r.recovered}" + (f", invoice {r.invoice}" if r.invoice else "")
                   + (f", bill period {r.bill_period[0]}..{r.bill_period[1]}" if r.bill_period else "")
                   + (f"; {signed}" if signed else ""))
    typer.echo("* the month's answer: its newest approved run, else its newest run (a draft)")


meters_app = typer.Typer(help="Meters: record a replacement, list replacements.", no_args_is_help=True)
app.add_typer(meters_app, name="meters")


def _local_time(text: str, cfg: SiteConfig):
    from datetime import datetime as _dt
    from zoneinfo import ZoneInfo
    try:
        t = _dt.fromisoformat(text)
    except ValueError:
        raise fail(f"--at {text!r}: expected a local time such as '2026-10-15 10:00'", 2) from None
    return t if t.tzinfo else t.replace(tzinfo=ZoneInfo(cfg.site.timezone))


@meters_app.command("replace")
def meters_replace(meter: str = typer.Argument(..., help="meter id from the site file"),
                   at: str = typer.Option(..., "--at", help="when it was swapped (local time, e.g. '2026-10-15 10:00')"),
                   old_final: str = typer.Option(..., "--old-final", help="the old meter's last reading, kWh"),
                   new_initial: str = typer.Option(..., "--new-initial", help="the new meter's first reading, kWh"),
                   by: str = typer.Option(..., "--by", help="who swapped or records it"),
                   note: str = typer.Option("", "--note"),
                   force: bool = typer.Option(False, "--force", help="record it although its readings do not fit "
                                              "the counters stored around --at (said in its note)"),
                   config: Path = typer.Option(..., "-c", "--config", help="site file")) -> None:
    """Record a meter replacement: billing bridges the counters, alarms expect the drop. The
    readings are checked against the counters stored before and after --at."""
    from datetime import datetime as _dt, timezone
    from decimal import Decimal, InvalidOperation
    from zoneinfo import ZoneInfo

    from .billing.replacement import Proposed, already_recorded, forced_note, replacement_problems
    from .ledger import Ledger, LedgerError, Replacement
    cfg = _load(config)
    if meter not in {m.id for m in cfg.meters}:
        raise fail(f"no meter named {meter!r} in {config}", 2)
    values = []
    for name, text in (("--old-final", old_final), ("--new-initial", new_initial)):
        try:
            v = Decimal(text)
            if not v.is_finite() or v < 0:
                raise InvalidOperation
        except InvalidOperation:
            raise fail(f"{name} {text!r} is not a meter reading in kWh", 2) from None
        values.append(v)
    when = _local_time(at, cfg)
    now = _dt.now(timezone.utc)
    if when > now:
        raise fail(f"--at {at}: that is in the future", 2)
    ledger = Ledger(cfg.storage_path)
    try:
        taken = already_recorded(ledger, meter, when, ZoneInfo(cfg.site.timezone))
        if taken:
            raise fail(taken, 2)
        problems = replacement_problems(cfg, ledger, Proposed(cfg.meter(meter), when, values[0], values[1]), now)
        if problems and not force:
            for p in problems:
                typer.echo(f"error: {p}", err=True)
            typer.echo("nothing recorded: correct the figures, or give --force to record them anyway", err=True)
            raise typer.Exit(2)
        for p in problems:
            typer.echo(f"warning: recorded with --force: {p}", err=True)
        ledger.record_replacement(Replacement(meter, when.astimezone(timezone.utc), values[0], values[1], by,
                                              forced_note(note, problems) if problems else note, now))
    except LedgerError as e:
        raise fail(str(e), 2) from None
    finally:
        ledger.close()
    typer.echo(f"recorded: meter {meter} replaced at {when.isoformat(timespec='minutes')}, old meter's final "
               f"{values[0]} kWh, new meter's first {values[1]} kWh, by {by}")


@meters_app.command("replacements")
def meters_replacements(config: Path = typer.Option(..., "-c", "--config", help="site file"),
                        meter: Optional[str] = typer.Argument(None, help="only this meter")) -> None:
    """The recorded meter replacements."""
    from zoneinfo import ZoneInfo

    from .ledger import Ledger
    cfg = _load(config)
    if not cfg.storage_path.exists():
        raise fail(f"no ledger at {cfg.storage_path} yet", 2)
    ledger = Ledger(cfg.storage_path)
    try:
        rows = ledger.replacements(meter)
    finally:
        ledger.close()
    if not rows:
        typer.echo("没有换表记录 (no replacements recorded)")
    tz = ZoneInfo(cfg.site.timezone)
    for r in rows:
        typer.echo(f"{r.at.astimezone(tz):%Y-%m-%d %H:%M}  {r.meter:<12} old final {r.old_final} -> new first "
                   f"{r.new_initial}  by {r.by}" + (f"  ({r.note})" if r.note else ""))


equipment_app = typer.Typer(help="The equipment register (设备台账): import and export a spreadsheet.",
                            no_args_is_help=True)
app.add_typer(equipment_app, name="equipment")


@equipment_app.command("import")
def equipment_import(file: Path = typer.Argument(..., help="XLSX, or CSV in UTF-8 or GBK"),
                     by: str = typer.Option(..., "--by", help="who imports it"),
                     config: Path = typer.Option(..., "-c", "--config", help="site file")) -> None:
    """Check the whole file (every problem with its row and column) and, only if it has none,
    add or update its equipment in the ledger in one transaction."""
    from datetime import datetime as _dt, timezone

    from .clock import to_us
    from .maintenance.register import RegisterError, import_register
    cfg = _load(config)
    try:
        data = file.read_bytes()
    except OSError as e:
        raise fail(f"{file}: cannot read: {e.strerror or e}", 2) from None
    try:
        added, changed = import_register(cfg, data, str(file), by, to_us(_dt.now(timezone.utc)))
    except RegisterError as e:
        for line in e.problems:
            typer.echo(line, err=True)
        raise fail(f"{file}: {e.count} problem(s); nothing was imported", 2) from None
    typer.echo(f"{file}: {added} added, {changed} updated")


@equipment_app.command("export")
def equipment_export(file: Path = typer.Argument(..., help="where to write: .xlsx or .csv"),
                     encoding: str = typer.Option("utf-8", "--encoding", help="CSV: utf-8 (with BOM) or gbk"),
                     english: bool = typer.Option(False, "--en", help="English headers and words"),
                     config: Path = typer.Option(..., "-c", "--config", help="site file")) -> None:
    """The whole register (the site's devices and the other equipment) as a spreadsheet."""
    from .maintenance.register import export_register
    cfg = _load(config)
    kind = file.suffix.lower().lstrip(".")
    if kind not in ("xlsx", "csv"):
        raise fail(f"{file}: give a .xlsx or .csv file name", 2)
    if encoding.lower() not in ("utf-8", "utf8", "gbk", "gb18030"):
        raise fail(f"--encoding {encoding}: utf-8 or gbk", 2)
    data = export_register(cfg, kind, encoding, "en" if english else "zh")
    try:
        file.write_bytes(data)
    except OSError as e:
        raise fail(f"{file}: cannot write: {e.strerror or e}", 2) from None
    typer.echo(f"{file}: written")


report_app = typer.Typer(help="Monthly reports of the estate's own work: `service`, the service and safety report.",
                         no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("service")
def report_service(config: Path = typer.Option(..., "-c", "--config", help="site file"),
                   month: str = typer.Option(..., "--month", help="the month, e.g. 2026-11"),
                   out: Path = typer.Option(Path("reports"), "--out", help="directory for the HTML and XLSX"),
                   english: bool = typer.Option(False, "--en", help="the report in English"),
                   trend: int = typer.Option(5, "--trend", min=0, max=24, help="months before it in the trend"),
                   no_points: bool = typer.Option(False, "--no-points", help="do not queue InfluxDB points")) -> None:
    """The month's service and safety report (月度服务与安全报告): alarms, repair orders against
    their targets and repeat faults, inspections, patrol, refused cards and forced doors, and the
    trend; HTML (printable) and XLSX, and InfluxDB points for Grafana when the site has InfluxDB."""
    from .maintenance.service_run import ServiceReportError, run_service
    from .maintenance.service_render import pct
    cfg = _load(config)
    try:
        run = run_service(cfg, month, out, "en" if english else "zh", trend, send=not no_points)
    except ServiceReportError as e:
        raise fail(str(e), 2) from None
    h = run.report.trend[-1]
    flagged = [d.device for d in run.report.repeats if d.flagged]
    typer.echo(f"{cfg.site.name} {month}{'' if run.complete else ' (so far: the month is not over)'}: "
               f"{h.alarms} alarms, {h.orders} repair orders (response on time {pct(h.response_on_time)}, repair on "
               f"time {pct(h.repair_on_time)}), inspections on time {pct(h.inspections_on_time)}, patrol "
               f"{pct(h.patrol_completeness)} complete, {h.card_refusals} refused cards, {h.forced_doors} forced doors")
    if flagged:
        typer.echo(f"repeat faults: {', '.join(flagged)}")
    for kind, path in run.files.items():
        typer.echo(f"{kind:<5} {path}")
    if run.points:
        typer.echo(f"{run.points} points queued for InfluxDB")


lighting_app = typer.Typer(help="Public lighting: the switching plan of a day, overrides, what it saved.",
                           no_args_is_help=True)
app.add_typer(lighting_app, name="lighting")


@lighting_app.command("plan")
def lighting_plan(day: str = typer.Option(None, "--date", help="local date, e.g. 2026-12-21 (default: today)"),
                  config: Path = typer.Option(EXAMPLE_SITE, "-c", "--config", help="site file (default: the example site)"),
                  circuit: Optional[list[str]] = typer.Option(None, "--circuit", help="only these circuits"),
                  as_json: bool = typer.Option(False, "--json"),
                  english: bool = typer.Option(False, "--en", help="English text")) -> None:
    """The day's switching times of every lighting circuit (local time), from its schedule."""
    from datetime import date, datetime
    from zoneinfo import ZoneInfo

    from .lighting.plan import Planner
    cfg = _load(config)
    try:
        d = date.fromisoformat(day) if day else datetime.now(ZoneInfo(cfg.site.timezone)).date()
    except ValueError:
        raise fail(f"--date {day!r}: not a date like 2026-12-21", 2) from None
    planner = Planner(cfg)
    wanted = circuit or [c.id for c in cfg.lighting.circuits]
    unknown = [c for c in wanted if c not in planner.circuits]
    if unknown:
        raise fail(f"--circuit {unknown[0]}: no lighting circuit of that name in {config}", 2)
    if not wanted:
        typer.echo(f"{config}: no lighting circuits" if english else f"{config}: 没有照明回路 (no lighting circuits)")
        return
    rise, set_ = planner.sun.times(d)
    rows = []
    for cid in wanted:
        start_on, switches = planner.day(cid, d)
        rows.append({"circuit": cid, "name": planner.circuits[cid].name, "schedule": planner.circuits[cid].schedule,
                     "on_at_midnight": start_on,
                     "switches": [{"at": s.at.isoformat(), "on": s.on, "why": s.why} for s in switches]})
    if as_json:
        typer.echo(json.dumps({"date": d.isoformat(), "site": cfg.site.id,
                               "sunrise": rise.isoformat() if rise else None,
                               "sunset": set_.isoformat() if set_ else None, "circuits": rows},
                              ensure_ascii=False, indent=2))
        return
    hm = lambda t: t.strftime("%H:%M:%S") if t else "--"  # noqa: E731
    on_w, off_w = ("on", "off") if english else ("开", "关")
    head = (f"{cfg.site.name} {d.isoformat()}: sunrise {hm(rise)}, sunset {hm(set_)} ({config})" if english
            else f"{cfg.site.name} {d.isoformat()}: 日出 {hm(rise)}, 日落 {hm(set_)} ({config})")
    typer.echo(head)
    for r in rows:
        times = "  ".join(f"{datetime.fromisoformat(s['at']).strftime('%H:%M:%S')} {on_w if s['on'] else off_w}"
                          for s in r["switches"])
        start = (on_w if r["on_at_midnight"] else off_w)
        if not r["switches"]:
            times = ("on all day" if r["on_at_midnight"] else "off all day") if english else \
                ("全天开" if r["on_at_midnight"] else "全天关")
        typer.echo(f"  {r['circuit']:<12} {r['schedule']:<16} 00:00 {start}  {times}")


@lighting_app.command("savings")
def lighting_savings(month: str = typer.Option(..., "--month", help="e.g. 2026-11"),
                     config: Path = typer.Option(..., "-c", "--config", help="site file"),
                     as_json: bool = typer.Option(False, "--json"),
                     english: bool = typer.Option(False, "--en", help="English text")) -> None:
    """What each lighting circuit saved in a month against its baseline (kWh per hour of darkness)."""
    import re

    from .lighting.savings import month_savings, totals
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise fail(f"--month {month!r}: a month like 2026-11", 2)
    cfg = _load(config)
    db = _ledger_ro(cfg)
    try:
        rows = month_savings(cfg, db, month)
    finally:
        db.close()
    tot = totals(rows)
    if as_json:
        typer.echo(json.dumps({"month": month, "circuits": [{k: (str(v) if v is not None and not isinstance(v, (str, float))
                                                                 else v) for k, v in vars(r).items()} for r in rows],
                               "saved_kwh": str(tot["saved_kwh"]), "saved_yuan": str(tot["saved_yuan"])},
                              ensure_ascii=False, indent=2))
        return
    if not rows:
        typer.echo("no lighting circuit has a baseline" if english else "没有设定基准期的照明回路 (no baseline)")
        return
    for r in rows:
        saved = f"{r.saved_kwh} kWh, {r.saved_yuan} yuan" if r.saved_kwh is not None else r.note
        typer.echo(f"  {r.circuit:<12} {r.month_kwh or '—':>10} kWh ({'expected' if english else '基准折算'} "
                   f"{r.expected_kwh or '—'}): {saved}")
    typer.echo(f"{'saved' if english else '合计节约'} {tot['saved_kwh']} kWh, {tot['saved_yuan']} "
               f"{'yuan' if english else '元'} ({tot['judged']}/{tot['circuits']})")


users_app = typer.Typer(help="Console users: add (or change a password), remove, list.", no_args_is_help=True)
app.add_typer(users_app, name="users")


def _users_block(lines: list[str]) -> tuple[int, int]:
    """[start, end) of the top-level `users:` block in the site file's lines, or (-1, -1)."""
    import re as _re
    start = next((i for i, line in enumerate(lines) if _re.match(r"^users:\s*(\[\s*\])?\s*(#.*)?$", line)), -1)
    if start < 0:
        return -1, -1
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#-"):
        end += 1
    return start, end


def _write_site_file(config: Path, text: str, cfg: SiteConfig) -> None:
    """Replace the site file atomically. It holds password hashes, so it is never left readable
    by every user: its owner, group and mode are kept, less the others' bits. A file that others
    could read (as an older install.sh left it, root:root 0644) may be how the gateway read it:
    its group becomes the gateway user's (the ledger's owner's) so that the gateway still can."""
    from .private import replace_file
    real = config.resolve()
    st = real.stat()
    mode, gid = st.st_mode & 0o770, st.st_gid
    if st.st_mode & 0o004:
        try:
            gid, mode = cfg.storage_path.stat().st_gid, mode | 0o040
        except OSError:
            pass                 # no ledger yet: the group stays
        typer.echo(f"{config} was readable by every user (it holds password hashes): now mode {mode:o}", err=True)
    try:
        replace_file(real, text.encode("utf-8"), mode, owner=(st.st_uid, gid))
    except OSError as e:
        raise fail(f"{config}: cannot write it keeping its owner and group: {e.strerror or e} (run as root?)") from None


def _rewrite_users(config: Path, cfg: SiteConfig, change) -> None:
    """Apply `change(entries) -> entries` to the one-line entries of `users:` and write the file
    back only if it still validates; the rest of the file (comments included) is left alone."""
    import re as _re
    original = config.read_text(encoding="utf-8")
    lines = original.splitlines()
    start, end = _users_block(lines)
    entries = [line for line in lines[start + 1:end] if line.strip().startswith("- ")] if start >= 0 else []
    named = {}
    for line in entries:
        m = _re.match(r"^\s*-\s*\{\s*name:\s*([^,}\s]+)", line)
        if m is None:
            raise fail(f"{config}: the users: block has an entry this command cannot edit ({line.strip()[:40]}...): "
                       "write each user on one line as {name: ..., role: ..., password_hash: ...}", 2)
        named[m.group(1).strip("'\"")] = line
    kept = [f"  {line.strip()}" for line in change(named).values()]
    block = ["users:", *kept] if kept else ["users: []"]     # a bare `users:` would be null, not a list
    if start >= 0:
        lines[start:end] = block
    else:
        lines += ["", "# Console users (gateway users add NAME --role guard|electrician|accountant|admin)."] + block
    _write_site_file(config, "\n".join(lines) + "\n", cfg)
    try:
        load_site(config)
    except ConfigError as e:
        _write_site_file(config, original, cfg)
        for problem in e.problems:
            typer.echo(f"{e.source}: {problem}", err=True)
        raise fail(f"{config} left unchanged", 2) from None


@users_app.command("add")
def users_add(name: str = typer.Argument(..., help="login name (letters, digits, . _ -)"),
              role: str = typer.Option(..., "--role", help="guard, electrician, accountant or admin"),
              display: str = typer.Option("", "--display-name", help="the name shown, e.g. 张师傅"),
              password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from stdin"),
              config: Path = typer.Option(..., "-c", "--config", help="site file")) -> None:
    """Add a console user or set a user's password and role; writes an argon2 hash, never the password."""
    import json as _json
    import re as _re

    from .config import ROLES
    from .web.auth import hash_password
    if role not in ROLES:
        raise fail(f"--role {role!r}: expected one of {', '.join(ROLES)}", 2)
    if not _re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise fail(f"user name {name!r}: use letters, digits, '.', '_' and '-'", 2)
    cfg = _load(config)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise fail("the password needs at least 8 characters", 2)
    entry = (f"- {{name: {name}, role: {role}, password_hash: '{hash_password(password)}'"
             + (f", display_name: {_json.dumps(display, ensure_ascii=False)}" if display else "") + "}")

    def change(named: dict) -> dict:
        named[name] = entry
        return named
    _rewrite_users(config, cfg, change)
    typer.echo(f"user {name} ({role}) written to {config}; a running gateway picks it up when reloaded "
               "(systemctl reload estate-gateway), and the user's open sessions end then")


@users_app.command("remove")
def users_remove(name: str = typer.Argument(...),
                 config: Path = typer.Option(..., "-c", "--config", help="site file")) -> None:
    """Remove a console user."""
    cfg = _load(config)
    found = []

    def change(named: dict) -> dict:
        found.append(named.pop(name, None))
        return named
    _rewrite_users(config, cfg, change)
    if found[0] is None:
        raise fail(f"no user {name!r} in {config}", 2)
    typer.echo(f"user {name} removed from {config}; a running gateway ends the user's sessions when reloaded "
               "(systemctl reload estate-gateway)")


@users_app.command("list")
def users_list(config: Path = typer.Option(..., "-c", "--config", help="site file")) -> None:
    """The console users and their roles."""
    cfg = _load(config)
    if not cfg.users:
        typer.echo("no users (the console stays off): gateway users add NAME --role ROLE -c FILE")
    for u in cfg.users:
        typer.echo(f"{u.name:<16} {u.role:<12} {u.display_name}")


@app.command()
def replay(recording: Path = typer.Argument(..., help="a file written by `gateway run --record`"),
           config: Path = typer.Option(..., "-c", "--config", help="site file"),
           speed: Optional[float] = typer.Option(None, "--speed", help="N times real time (default: as fast as possible)"),
           fastest: bool = typer.Option(False, "--as-fast-as-possible", help="no pacing (the default)"),
           tail_s: float = typer.Option(0, "--tail", help="simulated seconds to tick on after the last record "
                                        "(no polls then: meters go stale)"),
           as_json: bool = typer.Option(False, "--json"),
           transports: bool = typer.Option(False, "--transports", help="run the whole gateway against simulators "
                                           "that play the recording on real transports (Modbus servers, ptys, "
                                           "an MQTT broker); after the last record the meters keep answering"),
           broker: Optional[str] = typer.Option(None, "--broker", help="with --transports: the MQTT broker "
                                                "host:port (default: an embedded one); the replayed alerts are "
                                                "published there")) -> None:
    """Drive recorded traffic through the real drivers and rules under a simulated clock; print the alerts."""
    from zoneinfo import ZoneInfo

    from .replay import replay as run_replay
    cfg = _load(config)
    setup_logging()
    logging.getLogger("gateway").setLevel(logging.ERROR)
    if not recording.exists():
        raise fail(f"no such recording: {recording}", 2)
    if fastest and speed:
        raise fail("--speed and --as-fast-as-possible exclude each other", 2)
    tz = ZoneInfo(cfg.site.timezone)

    def show(c) -> None:
        a = c.alert
        if as_json:
            typer.echo(json.dumps({"t": a.updated_at.isoformat(), "event": c.what, "rule": a.rule, "source": a.source,
                                   "severity": a.severity, "state": a.state, "message": a.message},
                                  ensure_ascii=False))
        else:
            typer.echo(f"{a.updated_at.astimezone(tz):%Y-%m-%d %H:%M:%S}  {c.what:<12} {a.severity:<8} "
                       f"{a.rule} {a.source}: {a.message}")

    where = None
    if broker is not None:
        if not transports:
            raise fail("--broker needs --transports", 2)
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise fail(f"--broker {broker!r}: expected host:port", 2)
        where = (host, int(port))
    run = None
    try:
        if transports:
            from .replay_live import replay_transports
            run = replay_transports(cfg, recording, speed=speed, tail_s=tail_s, on_alert=show, broker=where)
            changes = run.changes
        else:
            changes = asyncio.run(run_replay(cfg, recording, speed=speed, tail_s=tail_s, on_alert=show))
    except (ValueError, OSError) as e:
        raise fail(str(e), 2) from None
    if not as_json:
        typer.echo(f"replay: {sum(c.what == 'raised' for c in changes)} alerts raised, "
                   f"{sum(c.what == 'cleared' for c in changes)} cleared")
        if run is not None:
            typer.echo(f"transports: {run.summary()}")


def _units(text: str) -> range:
    try:
        lo, _, hi = text.partition("-")
        r = range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise fail(f"--units {text!r}: expected a range such as 1-247", 2) from None
    if not r or r.start < 1 or r.stop > 248:
        raise fail(f"--units {text!r}: unit ids are 1-247", 2)
    return r


@app.command()
def scan(port: Optional[str] = typer.Option(None, "--port", help="serial port, e.g. /dev/ttyUSB0"),
         host: Optional[str] = typer.Option(None, "--host", help="Modbus TCP serial server"),
         tcp_port: int = typer.Option(502, "--tcp-port"),
         framer: str = typer.Option("socket", "--framer", help="TCP framing: socket or rtu"),
         protocol: str = typer.Option("modbus", "--protocol", help="modbus, dlt645 or auto (both, one after the other)"),
         baudrate: Optional[int] = typer.Option(None, "--baudrate", help="default: 9600 (Modbus), 2400 (DL/T 645)"),
         parity: Optional[str] = typer.Option(None, "--parity", help="N, E or O; default: N (Modbus), E (DL/T 645)"),
         stopbits: int = typer.Option(1, "--stopbits"),
         units: str = typer.Option("1-247", "--units", help="Modbus unit id range"),
         addresses: Optional[str] = typer.Option(None, "--addresses", help="DL/T 645: probe these 12-digit "
                                                 "addresses (comma-separated, or a file with one per line) "
                                                 "instead of the address query, which only one meter per line "
                                                 "can answer"),
         try_settings: bool = typer.Option(False, "--try-settings", help="try the common baud rates (and parities, "
                                           "unless --parity is given) and say which the line answers on"),
         timeout: Optional[float] = typer.Option(None, "--timeout", help="seconds to wait for an answer; "
                                                 "default 0.2 (Modbus), 1.0 (DL/T 645)"),
         write_config: bool = typer.Option(False, "--write-config", help="print the bus and the meters found as "
                                           "site-file entries (YAML) to paste"),
         bus_id: Optional[str] = typer.Option(None, "--bus-id", help="with --write-config: the bus id "
                                              "(default from the port or host)"),
         config: Optional[Path] = typer.Option(None, "-c", "--config", help="site file (adds its own meter models)"),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Find the meters on a serial port or TCP host: Modbus unit ids or DL/T 645 addresses, and the
    model each one looks like; optionally the line settings they answer on."""
    from pydantic import ValidationError

    from .config import Dlt645Bus, ModbusRtuBus, ModbusTcpBus
    from .drivers.modbus import BusDown
    from .meter_models import is_dlt645_model, load_dlt645_models, load_models

    if (port is None) == (host is None):
        raise fail("give either --port (serial) or --host (TCP)", 2)
    if protocol not in ("modbus", "dlt645", "auto"):
        raise fail(f"--protocol {protocol!r}: expected modbus, dlt645 or auto", 2)
    if protocol == "dlt645" and host:
        raise fail("--protocol dlt645 needs --port: DL/T 645 is scanned on a serial port", 2)
    if parity is not None and parity not in ("N", "E", "O"):
        raise fail(f"--parity {parity!r}: expected N, E or O", 2)
    if as_json and write_config:
        raise fail("--json and --write-config exclude each other", 2)
    protocols = ["modbus", "dlt645"] if protocol == "auto" and not host else [
        "modbus" if protocol == "auto" else protocol]
    unit_range = _units(units) if "modbus" in protocols else range(0)
    known = _addresses(addresses) if addresses else None
    if config:
        models = _load(config).models
    else:
        models = {**load_models([SHIPPED_MODELS_DIR])[0], **load_dlt645_models([SHIPPED_MODELS_DIR])[0]}
    setup_logging()
    logging.getLogger("gateway").setLevel(logging.CRITICAL)
    echo = (lambda text: typer.echo(text, err=True)) if (as_json or write_config) else typer.echo

    def bus_for(proto: str, baud: int, par: str, wait: float):
        if proto == "dlt645":
            return Dlt645Bus(id="scan", type="dlt645", port=port, baudrate=baud, parity=par, stopbits=stopbits,
                             timeout_s=wait)
        if host:
            return ModbusTcpBus(id="scan", type="modbus_tcp", host=host, port=tcp_port, framer=framer, timeout_s=wait)
        return ModbusRtuBus(id="scan", type="modbus_rtu", port=port, baudrate=baud, parity=par, stopbits=stopbits,
                            timeout_s=wait)

    results = []  # (protocol, bus config, found)
    for proto in protocols:
        wait = timeout if timeout is not None else SCAN_DEFAULTS[proto][2]
        baud, par = baudrate or SCAN_DEFAULTS[proto][0], parity or SCAN_DEFAULTS[proto][1]
        if try_settings and not host:
            settings = [(b, p) for b in SCAN_BAUDRATES[proto] for p in ([parity] if parity else SCAN_PARITIES[proto])]
        else:
            settings = [(baud, par)]
        try:
            buses = [bus_for(proto, b, p, wait) for b, p in settings]
        except ValidationError as e:
            raise fail("; ".join(f"--{err['loc'][-1]}: {err['msg']}" for err in e.errors()), 2) from None
        label = "DL/T 645" if proto == "dlt645" else "Modbus"
        chosen = buses[0]
        if len(buses) > 1:
            echo(f"trying {label} settings on {port}:")
            answering, opened = [], False
            for b in buses:
                try:
                    who = asyncio.run(_answers(b, unit_range, known, wait))
                except BusDown:
                    echo(f"  {_line(b)}: cannot open the port at these settings")
                    continue
                opened = True
                echo(f"  {_line(b)}: " + (f"answers ({who})" if who else "no answer"))
                if who:
                    answering.append(b)
            if not opened:
                raise fail(f"cannot open {port}: check the cable, the port name and that nothing else uses it")
            if not answering:
                echo(f"no {label} meter answered on {port} at any of these settings")
                continue
            chosen = answering[0]
        where = f"{host}:{tcp_port}" if host else f"{port} {_line(chosen)}"
        try:
            if proto == "dlt645":
                found = asyncio.run(_scan_dlt645(chosen, known, models, wait, max(wait, 1.0)))
            else:
                from .drivers.modbus_scan import scan as run_scan
                register_maps = {k: v for k, v in models.items() if not is_dlt645_model(v)}
                found = asyncio.run(run_scan(chosen, unit_range, register_maps, wait, max(wait, 1.0)))
        except BusDown:
            raise fail(f"cannot open {where}: check the cable, the port name and that nothing else uses it") from None
        except _Collision:
            echo(f"scanned {where} (DL/T 645): several meters answered the address query at once and their "
                 "answers collide; give their addresses (from the nameplates) with --addresses")
            continue
        results.append((proto, chosen, found))
        if proto == "dlt645":
            what = f"addresses {', '.join(known)}" if known else "address query"
            echo(f"scanned {where} (DL/T 645, {what}): {len(found)} answered")
        else:
            echo(f"scanned {where}, units {units}: {len(found)} answered")
        for f in found:
            v = f.values
            volts = v.get("voltage_v", v.get("voltage_l1_v", float("nan")))
            detail = (f"{volts:.1f} V, {v.get('freq_hz', float('nan')):.2f} Hz, {v.get('energy_kwh', float('nan')):.2f} kWh"
                      if f.model else f.note)
            if f.model and f.note:
                detail += f" ({f.note})"
            name = f"address {f.address}" if proto == "dlt645" else f"unit {f.unit:>3}"
            echo(f"  {name}: {f.model or 'unknown':<16} {detail}")
    if as_json:
        typer.echo(json.dumps([{"protocol": proto, "bus": _bus_entry(b, "scan"), **vars(f)}
                               for proto, b, found in results for f in found], ensure_ascii=False, indent=2))
    elif write_config:
        typer.echo(_site_entries(results, bus_id or _bus_id(port or host)))


SCAN_DEFAULTS = {"modbus": (9600, "N", 0.2), "dlt645": (2400, "E", 1.0)}
SCAN_BAUDRATES = {"modbus": (9600, 19200, 4800, 2400), "dlt645": (2400, 1200, 4800, 9600)}
SCAN_PARITIES = {"modbus": ("N", "E"), "dlt645": ("E",)}


class _Collision(Exception):
    """Several DL/T 645 meters answered the broadcast address query at once."""


def _line(b) -> str:
    return f"{b.baudrate} {b.bytesize}{b.parity}{b.stopbits}" if hasattr(b, "baudrate") else b.type


def _addresses(text: str) -> list[str]:
    """--addresses: a comma-separated list, or a file with one address per line (# comments)."""
    import re as _re
    path = Path(text)
    if "," not in text and path.is_file():
        items = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        items = [a.strip() for a in text.split(",")]
    items = [a for a in items if a]
    bad = [a for a in items if not _re.fullmatch(r"[0-9]{12}", a)]
    if bad or not items:
        raise fail(f"--addresses: {', '.join(bad) or 'none given'}: a DL/T 645 address is 12 digits "
                   "(e.g. 000012345678)", 2)
    return items


async def _answers(bus_cfg, units: range, known: list[str] | None, timeout: float) -> str:
    """Whether anything answers at these settings: '' or who (a unit id, an address, 'a garbled answer')."""
    from .drivers.scheduler import Garbled, NoAnswer
    if bus_cfg.type == "dlt645":
        from .drivers.dlt645 import Dlt645Bus, probe
        bus = Dlt645Bus(bus_cfg, [], lambda e: None)
        try:
            try:
                found = await probe(bus, known, timeout)
            except Garbled:
                return "several meters at once"
            return ", ".join(f"address {a}" for a in found)
        finally:
            await bus.close()
    from .drivers.modbus import ExceptionReply, ModbusBus
    from .drivers.modbus_scan import PROBE
    bus = ModbusBus(bus_cfg, [], lambda e: None)
    try:
        for unit in units:
            try:
                await bus.read_registers(unit, PROBE, timeout)
            except ExceptionReply:
                pass
            except (NoAnswer, Garbled):
                continue
            return f"unit {unit}"
        return ""
    finally:
        await bus.close()


async def _scan_dlt645(bus_cfg, known: list[str] | None, models: dict, timeout: float, read_timeout: float) -> list:
    from .drivers.dlt645 import Dlt645Bus, identify, probe
    from .drivers.scheduler import Garbled
    bus = Dlt645Bus(bus_cfg, [], lambda e: None)
    try:
        try:
            found = await probe(bus, known, timeout)
        except Garbled:
            raise _Collision from None
        return [await identify(bus, a, models, read_timeout) for a in found]
    finally:
        await bus.close()


def _bus_id(where: str) -> str:
    import re as _re
    name = _re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(where).name if "/" in where else where).strip("-.")
    return f"bus-{name or 'scan'}"[:64]


def _bus_entry(b, bus_id: str) -> dict:
    entry = {"id": bus_id, "type": b.type}
    if b.type == "modbus_tcp":
        entry.update(host=b.host, port=b.port)
        if b.framer != "socket":
            entry["framer"] = b.framer
    else:
        entry.update(port=b.port, baudrate=b.baudrate, bytesize=b.bytesize, parity=b.parity, stopbits=b.stopbits)
    entry["timeout_s"] = max(b.timeout_s, 0.5 if b.type != "dlt645" else 1.0)
    return entry


def _site_entries(results: list, bus_id: str) -> str:
    """The buses and meters found, as site-file entries (one flow mapping per line, like the example)."""
    import yaml as _yaml

    def flow(d: dict) -> str:
        text = _yaml.safe_dump(d, default_flow_style=True, allow_unicode=True, width=10_000, sort_keys=False).strip()
        # an address always in quotes: unquoted, other YAML readers take it for a number
        return text.replace(f"address: {d['address']}", f"address: '{d['address']}'") if "address" in d else text

    buses, meters = [], []
    results = [r for r in results if r[2]] or results[:1]  # a protocol that found nobody adds no bus
    for n, (proto, b, found) in enumerate(results):
        bid = bus_id if n == 0 else f"{bus_id}-{proto}"
        buses.append(f"  - {flow(_bus_entry(b, bid))}")
        for f in found:
            if proto == "dlt645":
                where, mid = {"address": f.address}, f"{bid}-{f.address}"
            else:
                where, mid = {"unit": f.unit}, f"{bid}-u{f.unit:03d}"
            if f.model is None:
                meters.append(f"  # {next(iter(where))} {next(iter(where.values()))}: {f.note}; "
                              f"name its model and uncomment:")
                meters.append(f"  # - {flow({'id': mid, 'name': '', 'bus': bid, **where, 'model': 'MODEL'})}")
                continue
            meters.append(f"  - {flow({'id': mid, 'name': '', 'bus': bid, **where, 'model': f.model, 'poll_s': 30, 'circuit': 'other'})}")
    head = ["# Found by `gateway scan`: paste under buses: and meters: of the site file, then give each meter",
            "# its name, circuit (and building), and check the model (a CT ratio cannot be read from a meter)."]
    return "\n".join(head + ["buses:"] + buses + ["meters:"] + (meters or ["  []"]))


def main() -> None:  # pragma: no cover - console script entry
    app()
