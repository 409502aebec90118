"""What only the gateway's user may read: the ledger (and its -wal and -shm), the key file beside
it (the console's session key, the card-hash key), `--record` files (card numbers in clear), and
the site file `gateway users add` rewrites (password hashes). Modes are checked with os.stat
under the usual umask 022 and under umask 000, where a plain open() would give 0666.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from gateway.config import parse_site
from gateway.recording import Recorder
from gateway.ledger import Ledger, LedgerError
from gateway.web.auth import hash_password, verify_password
from simulators.site import SiteSimulation

SITE = {"id": "t", "name": "测试", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83}


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_the_ledger_its_wal_shm_and_its_directories_are_private(tmp_path, umask):
    path = tmp_path / "var" / "lib" / "gw.db"
    ledger = Ledger(path)
    ledger.set_meta("x", "y")                   # a write: the -wal and -shm exist now
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert reader.execute("SELECT value FROM meta WHERE key = 'x'").fetchone() == ("y",)
    try:
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert mode(p) == 0o600, (p.name, oct(mode(p)))
        assert mode(tmp_path / "var") == mode(tmp_path / "var" / "lib") == 0o700
    finally:
        reader.close()
        ledger.close()


def test_keys_live_in_a_private_file_beside_the_ledger_not_in_it(tmp_path, umask):
    path = tmp_path / "gw.db"
    ledger = Ledger(path)
    card_key, web_key = ledger.secret("card_hash_key"), ledger.secret("web-session")
    assert len(card_key) == len(web_key) == 32 and card_key != web_key
    assert ledger.secret("card_hash_key") == card_key          # made once, then kept
    ledger.close()
    assert ledger.keys_path == tmp_path / "gw.db.keys" and mode(ledger.keys_path) == 0o600
    assert json.loads(ledger.keys_path.read_text()) == {"card_hash_key": card_key.hex(), "web-session": web_key.hex()}
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM meta WHERE key LIKE 'secret:%'").fetchone()[0] == 0
    db.close()
    for p in tmp_path.glob("gw.db*"):                           # in no file of the ledger's
        assert card_key.hex().encode() not in p.read_bytes() or p == ledger.keys_path, p
    again = Ledger(path)
    assert again.secret("card_hash_key") == card_key            # card hashes stay the same
    again.close()


def test_keys_an_older_gateway_kept_in_the_ledger_move_out_unchanged(tmp_path):
    path = tmp_path / "gw.db"
    old = Ledger(path)
    card_key, web_key = os.urandom(32).hex(), os.urandom(32).hex()
    old.set_meta("secret:card_hash_key", card_key)             # where an older gateway kept them
    old.set_meta("secret:web-session", web_key)
    old.close()
    os.chmod(path, 0o644)                                       # and how it made the file
    ledger = Ledger(path)
    try:
        assert ledger.secret("card_hash_key").hex() == card_key   # the same key: the same card hashes
        assert ledger.secret("web-session").hex() == web_key
        assert ledger.meta("secret:card_hash_key") is None and ledger.meta("secret:web-session") is None
    finally:
        ledger.close()
    assert mode(path) == 0o600 and mode(ledger.keys_path) == 0o600
    for p in tmp_path.glob("gw.db*"):                           # wiped, not just unlinked
        if p != ledger.keys_path:
            data = p.read_bytes()
            assert card_key.encode() not in data and web_key.encode() not in data, p


def test_a_damaged_key_file_is_one_clear_error(tmp_path):
    Ledger(tmp_path / "gw.db").close()
    (tmp_path / "gw.db.keys").write_text("{not json")
    ledger = Ledger(tmp_path / "gw.db")
    try:
        with pytest.raises(LedgerError, match=r"key file .*gw\.db\.keys: damaged"):
            ledger.secret("web-session")
    finally:
        ledger.close()


def test_a_recording_is_private(tmp_path, umask):
    now = datetime.now(timezone.utc)
    rec = Recorder(tmp_path / "new.jsonl", "t", now)
    rec.serial(now, "gate-n-in", b"\x02" + b"0004123456" + b"\x03")   # a card number, in clear
    rec.close()
    assert mode(tmp_path / "new.jsonl") == 0o600
    older = tmp_path / "older.jsonl"                            # appended to: it is tightened too
    older.write_text('{"type":"header"}\n')
    os.chmod(older, 0o644)
    Recorder(older, "t", now).close()
    assert mode(older) == 0o600 and len(older.read_text().splitlines()) == 2


# ---- gateway users add ------------------------------------------------------------------------

def _site_file(tmp_path: Path, file_mode: int) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"site": SITE, "storage": {"path": "var/gw.db"}}, allow_unicode=True) +
                    "# the operator's comment\n", encoding="utf-8")
    os.chmod(path, file_mode)
    return path


def _users(*args: str, password: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "users", *args], input=password, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("before,after", [(0o644, 0o640), (0o664, 0o660), (0o640, 0o640), (0o600, 0o600)])
def test_users_add_never_leaves_the_site_file_readable_by_everyone(tmp_path, umask, before, after):
    site = _site_file(tmp_path, before)
    proc = _users("add", "wang", "--role", "guard", "--password-stdin", "-c", str(site), password="guard-Pw-7c1e\n")
    assert proc.returncode == 0, proc.stderr
    assert mode(site) == after, oct(mode(site))
    text = site.read_text(encoding="utf-8")
    assert "# the operator's comment" in text
    (entry,) = yaml.safe_load(text)["users"]
    assert entry["name"] == "wang" and verify_password(entry["password_hash"], "guard-Pw-7c1e")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.yaml"]      # no temporary file left
    proc = _users("remove", "wang", "-c", str(site))
    assert proc.returncode == 0, proc.stderr
    assert mode(site) == after and yaml.safe_load(site.read_text())["users"] == []
    proc = _users("add", "li", "--role", "admin", "--password-stdin", "-c", str(site), password="admin-Pw-7c1e\n")
    assert proc.returncode == 0, proc.stderr
    assert [u["name"] for u in yaml.safe_load(site.read_text())["users"]] == ["li"] and mode(site) == after


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's group to one we are not in needs root")
def test_a_world_readable_site_file_is_given_to_the_gateway_users_group(tmp_path):
    """An older install.sh left it root:root 0644: the gateway read it as 'others'. Taking that
    away, `users add` gives the file the group of the ledger's owner, the gateway's user."""
    site = _site_file(tmp_path, 0o644)
    ledger = tmp_path / "var" / "gw.db"
    Ledger(ledger).close()
    os.chown(ledger, 4242, 4343)                               # the gateway's user and group
    proc = _users("add", "wang", "--role", "guard", "--password-stdin", "-c", str(site), password="guard-Pw-7c1e\n")
    assert proc.returncode == 0, proc.stderr
    st = os.stat(site)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, 4343)
    assert "was readable by every user" in proc.stderr


def test_a_symlinked_site_file_stays_a_symlink(tmp_path):
    site = _site_file(tmp_path, 0o640)
    link = tmp_path / "current.yaml"
    link.symlink_to(site)
    proc = _users("add", "wang", "--role", "guard", "--password-stdin", "-c", str(link), password="guard-Pw-7c1e\n")
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and "wang" in site.read_text()


# ---- gateway run ----------------------------------------------------------------------------

async def test_gateway_run_under_umask_000_creates_nothing_others_can_read(tmp_path):
    meters = [{"id": "m1", "bus": "b", "unit": 1, "model": "chint-ddsu666", "poll_s": 1,
               "circuit": "stairwell_lighting"}]
    cfg = parse_site({"site": SITE, "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1",
                                               "timeout_s": 0.3}], "meters": meters}, base_dir=tmp_path)
    port = _free_port()
    async with SiteSimulation(cfg) as sim:
        bus = dict(cfg.buses[0].model_dump(mode="json"), **sim.bus_overrides["b"])
        data = {"site": SITE, "storage": {"path": "var/gw.db", "commit_interval_s": 0.2}, "buses": [bus],
                "meters": meters, "web": {"bind": "127.0.0.1", "port": port},
                "users": [{"name": "wang", "role": "guard", "password_hash": hash_password("guard-Pw-7c1e")}]}
        site = tmp_path / "site.yaml"
        site.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "-c", str(site), "--record", str(tmp_path / "traffic.jsonl"),
            stderr=asyncio.subprocess.PIPE, cwd=tmp_path, preexec_fn=lambda: os.umask(0))
        db = tmp_path / "var" / "gw.db"
        try:
            async with asyncio.timeout(30):
                while not (Path(f"{db}-wal").exists() and Path(f"{db}.keys").exists() and _readings(db)):
                    await asyncio.sleep(0.1)
            made = {p.name: mode(p) for p in [tmp_path / "var", *(tmp_path / "var").iterdir(),
                                                tmp_path / "traffic.jsonl"]}
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert made == {"var": 0o700, "gw.db": 0o600, "gw.db-wal": 0o600, "gw.db-shm": 0o600, "gw.db.keys": 0o600,
                    "traffic.jsonl": 0o600}, made


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _readings(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return con.execute("SELECT count(*) FROM readings").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0
