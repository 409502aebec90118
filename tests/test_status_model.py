"""The status read model (gateway/ledger/queries.py): `gateway status --json`, the health page's
JSON twin, /metrics and the demo summary show the same figures, because they read one model."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time

import aiohttp
import yaml

from gateway.config import parse_site
from gateway.ledger.queries import (DeviceStatus, bus_statuses, meter_state, read_only, read_status)
from gateway.ledger import Ledger
from web_fixtures import PASSWORDS, SITE_INFO, USERS, login, small_site


def one_meter_site(tmp_path):
    return parse_site({"site": SITE_INFO, "storage": {"path": str(tmp_path / "gw.db")},
                       "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1"}],
                       "meters": [{"id": "M1", "bus": "b", "unit": 1, "model": "chint-ddsu666"}]},
                      base_dir=tmp_path)


def test_meter_state_rules():
    off = DeviceStatus(False, 20, "no answer")
    assert meter_state(None, None) == "never"
    assert meter_state(None, off) == "offline"
    assert meter_state(20, off) == "offline"           # the reading the poller gave up after
    assert meter_state(21, off) == "online"            # it answered again since
    assert meter_state(None, DeviceStatus(True, 5, None)) == "online"


def test_without_a_ledger_every_meter_is_never_seen(tmp_path):
    cfg = one_meter_site(tmp_path)
    with read_only(cfg.storage_path) as db:
        assert db is None
        st = read_status(cfg, db)
    assert st.schema_version is None and st.outbox is None and st.count("never") == 1
    Ledger(cfg.storage_path).close()
    with read_only(cfg.storage_path) as db:
        (bus,) = bus_statuses(cfg, db)
    assert [m.state for m in bus.meters] == ["never"] and bus.connected is None


def _metrics(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        m = re.match(r'^(\w+)(?:\{(.*)\})? (\S+)$', line)
        if m and not line.startswith("#"):
            out[(m.group(1), frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))] = float(m.group(3))
    return out


async def _cli_status(site_file) -> dict:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "status", "-c", str(site_file),
                                                "--json", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_status_health_metrics_and_summary_agree(tmp_path):
    async with small_site(tmp_path) as site:
        site.sim.meter("B02-stair").dead = True
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(site.cfg.model_dump(mode="json"), allow_unicode=True), encoding="utf-8")
        async with site.session() as s:
            await login(s, "admin")
            deadline = time.monotonic() + 30
            while True:
                status = await _cli_status(site_file)
                async with s.get("/api/health") as r:
                    health = await r.json()
                async with s.get("/metrics", auth=aiohttp.BasicAuth(USERS["admin"], PASSWORDS["admin"])) as r:
                    metrics = _metrics(await r.text())
                summary = site.gw.summary()
                figures = {
                    "status": ([(b["id"], b["meters"], b["online"], len(b["offline"]), len(b["never"]))
                                for b in status["buses"]], status["outbox"]["depth"],
                               sorted(m["meter"] for b in status["buses"] for m in b["offline"])),
                    "health": ([(b["id"], b["meters"], b["online"], b["offline"], b["meters"] - b["online"] - b["offline"])
                                for b in health["buses"]], health["outbox"]["depth"],
                               sorted(m["meter"] for b in health["buses"] for m in b["offline_meters"])),
                    "metrics": ([(b["id"], int(sum(metrics[("gateway_meters", frozenset({("bus", b["id"]), ("state", x)}))]
                                                   for x in ("online", "offline", "never"))),
                                  *(int(metrics[("gateway_meters", frozenset({("bus", b["id"]), ("state", x)}))])
                                    for x in ("online", "offline", "never"))) for b in status["buses"]],
                                int(metrics[("gateway_outbox_depth", frozenset())]),
                                sorted(m["meter"] for b in status["buses"] for m in b["offline"])),
                }
                settled = status["meters"]["offline"] == 1 and summary["offline"] == 1 and \
                    len({json.dumps(f) for f in figures.values()}) == 1
                if settled or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
    assert figures["status"] == figures["health"] == figures["metrics"], figures
    assert figures["status"][0] == [("b", 2, 1, 1, 0)] and figures["status"][2] == ["B02-stair"]
    assert (summary["meters"], summary["online"], summary["offline"]) == (2, 1, 1)
    (off,) = status["buses"][0]["offline"]
    assert off["reason"] and health["buses"][0]["offline_meters"][0]["reason"] == off["reason"]
    assert status["disk"]["total"] > 0 and health["disk"]["total"] == status["disk"]["total"]


def test_reading_after_an_offline_status_counts_as_online_everywhere(tmp_path):
    """`gateway status` used the newest status alone; the model also looks at the newest reading."""
    cfg = one_meter_site(tmp_path)
    from datetime import datetime, timezone

    from gateway.events import DeviceStatus as StatusEvent, Reading
    from gateway.status import collect
    ledger = Ledger(cfg.storage_path)
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    ledger.add(StatusEvent("M1", "meter", False, t0, "no answer"))
    ledger.add(Reading("M1", t0.replace(minute=1), {"voltage_v": 230.0}))
    ledger.flush()
    ledger.close()
    st = collect(cfg, now=t0.replace(minute=2))
    assert st["buses"][0]["online"] == 1 and st["buses"][0]["offline"] == []
