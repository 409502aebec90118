"""The gateway as a service: systemd notifications and watchdog, SIGHUP reload, the unit file."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import parse_site
from gateway.service import Health, notify, watchdog_interval
from simulators.site import SiteSimulation

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "estate-gateway.service"
SITE = {"id": "wanhu", "name": "万户新居", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83}


def notify_socket(tmp_path: Path) -> socket.socket:
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.setblocking(False)
    return s


def received(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except BlockingIOError:
            return out


def test_notify_speaks_the_sd_notify_protocol(tmp_path, monkeypatch):
    s = notify_socket(tmp_path)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False                       # by hand: nothing to tell
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    assert notify("READY=1") and notify("STATUS=polling 3 meters")
    assert received(s) == ["READY=1", "STATUS=polling 3 meters"]
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", "1")                 # meant for another process
    assert watchdog_interval() is None


class _Bus:
    def __init__(self, bus_id, poll_s=30, backoff=300):
        self.bus = type("B", (), {"id": bus_id, "backoff_max_s": backoff})()
        self.meters = [type("S", (), {"meter": type("M", (), {"poll_s": poll_s})()})()]
        self.polls = 0

    def stats(self):
        return {"polls": self.polls}


class _Ledger:
    commit_interval_s = 1.0

    def __init__(self):
        self.commits, self.pending, self.holding = 0, 0, False


def test_health_needs_progress_of_every_bus_and_the_ledger():
    now = [0.0]
    a, b = _Bus("a"), _Bus("b")
    gw = type("G", (), {"buses": [a, b], "ledger": None})()
    h = Health(gw, clock=lambda: now[0])
    assert h.check() == (False, "starting")
    gw.ledger = _Ledger()
    assert h.check() == (True, "ok")
    for t in range(0, 400, 10):             # bus a polls (even if all its meters fail), b is stuck
        now[0] = float(t)
        a.polls += 1
        ok, why = h.check()
        if not ok:
            break
    assert not ok and why.startswith("bus b made no poll") and now[0] > 300 + 60
    b.polls += 1
    assert h.check() == (True, "ok")
    gw.ledger.pending = 50                  # rows waiting, no commit
    start = now[0]
    while h.check()[0]:
        now[0] += 5
        a.polls += 1
        b.polls += 1
    assert now[0] - start > 30 and "no commit" in h.check()[1]
    gw.ledger.holding = True                # the disk is full and the ledger holds rows on purpose
    assert h.check() == (True, "ok")
    gw.ledger.holding = False
    gw.ledger.commits += 1
    assert h.check() == (True, "ok")


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (tools/setup-tests.sh installs systemd)")
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "gateway").symlink_to(shutil.which("gateway") or sys.executable)
    for d in ("etc", "data"):
        (tmp_path / d).mkdir()
    text = UNIT.read_text(encoding="utf-8")
    for key, value in (("@VENV@", str(tmp_path / "venv")), ("@ETC@", str(tmp_path / "etc")),
                       ("@DATA@", str(tmp_path / "data")), ("@USER@", "root")):
        text = text.replace(key, value)
    assert "@" not in text.replace("$MAINPID", "")
    unit = tmp_path / "estate-gateway.service"
    unit.write_text(text, encoding="utf-8")
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    bad = tmp_path / "bad.service"
    bad.write_text(text.replace("WatchdogSec=", "WatchdogSecs="), encoding="utf-8")
    proc = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "Unknown key" in proc.stderr      # the check would see a typo


def test_install_script_dry_run_shows_every_step():
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "install.sh"), "--dry-run"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for step in ("useradd --system", "python3 -m venv /opt/estate-gateway/venv", "pip install",
                 "/etc/systemd/system/estate-gateway.service", "systemctl enable estate-gateway.service",
                 "journald.conf.d/estate-gateway.conf", "gateway check-config /etc/estate-gateway/site.yaml"):
        assert step in proc.stdout, step


def test_install_script_and_unit_keep_the_site_file_and_the_ledger_private():
    """The site file holds the console's password hashes: root:gateway 0640 (the service reads it,
    nobody else), on a fresh install and on an upgrade; the data directory (ledger, key file) is
    the service's alone, and so is everything the service creates."""
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "install.sh"), "--dry-run"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]
    site = "/etc/estate-gateway/site.yaml"
    assert [s for s in steps if s.startswith("install ") and s.endswith(site)] == \
        [f"install -m 0640 -o root -g gateway {ROOT}/edge_config/site.example.yaml {site}"]
    assert f"chown root:gateway {site}" in steps and f"chmod 0640 {site}" in steps      # upgrades too
    assert "install -d -m 0700 -o gateway -g gateway /var/lib/estate-gateway" in steps
    assert not [s for s in steps if s.startswith("install ") and "-m 0644" in s and "site" in s], steps
    assert "UMask=0077" in UNIT.read_text(encoding="utf-8").splitlines()


def site_data(tmp_path: Path, sim_bus: dict, poll_s: float = 1) -> dict:
    return {"site": SITE, "storage": {"path": str(tmp_path / "gw.db"), "commit_interval_s": 0.2},
            "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.3, **sim_bus}],
            "meters": [{"id": f"B0{u}-stair", "bus": "b", "unit": u, "model": "chint-ddsu666", "poll_s": poll_s,
                        "circuit": "stairwell_lighting"} for u in (1, 2)]}


async def wait_for(cond, timeout: float, what: str):
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None


async def test_sighup_reloads_a_good_file_and_keeps_running_on_a_bad_one(tmp_path):
    base = parse_site(site_data(tmp_path, {}), base_dir=tmp_path)
    notes = notify_socket(tmp_path)
    async with SiteSimulation(base) as sim:
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(site_data(tmp_path, sim.bus_overrides["b"])), encoding="utf-8")
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
        env.pop("WATCHDOG_PID", None)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(site_file),
                                                    stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path)
        log = bytearray()

        async def collect():
            async for line in proc.stderr:
                log.extend(line)
        reader = asyncio.create_task(collect())
        msgs: list[str] = []

        def seen(m: str) -> bool:
            msgs.extend(received(notes))
            return m in msgs

        def count() -> int:
            if not (tmp_path / "gw.db").exists():
                return 0
            db = sqlite3.connect(f"file:{tmp_path / 'gw.db'}?mode=ro", uri=True)
            try:
                return db.execute("SELECT count(*) FROM readings").fetchone()[0]
            except sqlite3.OperationalError:
                return 0
            finally:
                db.close()
        try:
            await wait_for(lambda: seen("READY=1"), 20, "READY")
            await wait_for(lambda: seen("WATCHDOG=1"), 10, "watchdog ping")
            await wait_for(lambda: count() >= 4, 20, "readings")
            # a good new file: the second meter now every 2 s, and a third meter
            data = site_data(tmp_path, sim.bus_overrides["b"])
            data["meters"][1]["poll_s"] = 2
            site_file.write_text(yaml.safe_dump(data), encoding="utf-8")
            msgs.clear()
            proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: seen("RELOADING=1") and seen("READY=1"), 20, "reload")
            before = count()
            await wait_for(lambda: count() >= before + 6, 20, "readings after the reload")
            # a bad file: logged, and the gateway runs on with the previous one
            site_file.write_text("site: {id: wanhu}\nmeters: [{id: x, bus: nowhere}]\n", encoding="utf-8")
            msgs.clear()
            proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: b"running on with the previous site file" in log, 20, "bad reload logged")
            await asyncio.sleep(0.5)
            assert proc.returncode is None, log.decode(errors="replace")[-3000:]
            before = count()
            try:
                await wait_for(lambda: count() >= before + 6, 20, "readings after the bad reload")
            except AssertionError:
                raise AssertionError(log.decode(errors="replace")[-4000:]) from None
            assert proc.returncode is None and "RELOADING=1" not in received(notes) + msgs
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 30)
            await reader
    text = log.decode(errors="replace")
    assert rc == 0, text[-2000:]
    assert "Traceback" not in text
    assert "reload: " in text and "problem(s)" in text
    # no reading lost across the reloads: every meter's readings follow its period without a hole
    db = sqlite3.connect(tmp_path / "gw.db")
    for meter in ("B01-stair", "B02-stair"):
        ts = [r[0] for r in db.execute("SELECT ts_us FROM readings WHERE meter = ? ORDER BY ts_us", (meter,))]
        gaps = [(b - a) / 1e6 for a, b in zip(ts, ts[1:])]
        assert len(ts) >= 5 and max(gaps) < 6.0, (meter, gaps)
