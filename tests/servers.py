"""Real servers on loopback for integration tests: InfluxDB 1.x and VictoriaMetrics.

Each runs as a process of the test session with its data in a temporary directory, on a free
port, and is stopped (and can be stopped and started again mid-test, to make outages).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tls(d: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=gateway test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return d / "ca.pem", d / "server.pem", d / "server.key"


def _http(url: str, data: bytes | None = None, timeout: float = 5.0, ca: Path | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Server:
    """A server process that can be stopped and started again on the same port and data."""

    name = "server"

    def __init__(self, workdir: Path, tls: bool = False):
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{self.name}.log"
        self.ca = self.cert = self.key = None
        if tls:
            self.ca, self.cert, self.key = make_tls(workdir)

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    def http(self, path: str, data: bytes | None = None) -> tuple[int, bytes]:
        return _http(self.url + path, data, ca=self.ca)

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                if self.ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start in {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Influx1(Server):
    name = "influxd"
    database = "gateway"

    def __init__(self, workdir: Path, max_body_size: int = 25_000_000, tls: bool = False):
        super().__init__(workdir, tls)
        self.max_body_size = max_body_size

    def command(self) -> list[str]:
        d = self.workdir
        conf = d / "influxdb.conf"
        conf.write_text(f"""
reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  max-body-size = {self.max_body_size}
  https-enabled = {"true" if self.ca else "false"}
  https-certificate = "{self.cert or ''}"
  https-private-key = "{self.key or ''}"
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
""")
        return [shutil.which("influxd") or "influxd", "-config", str(conf)]

    def ready(self) -> bool:
        return self.http("/ping")[0] == 204

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        self.query(f"CREATE DATABASE {self.database}")

    def query(self, q: str) -> dict:
        params = urllib.parse.urlencode({"q": q, "db": self.database, "epoch": "ms"})
        status, body = self.http(f"/query?{params}", data=b"")
        assert status == 200, body
        return json.loads(body)

    def points(self, measurement: str) -> list[dict]:
        """Every point of a measurement, as {column: value} dicts (time in ms)."""
        out = []
        for result in self.query(f'SELECT * FROM "{measurement}"')["results"]:
            for series in result.get("series", []):
                for row in series["values"]:
                    out.append(dict(zip(series["columns"], row)))
        return out


class Victoria(Server):
    name = "victoria-metrics"

    def command(self) -> list[str]:
        tls = ["-tls", f"-tlsCertFile={self.cert}", f"-tlsKeyFile={self.key}"] if self.ca else []
        return [shutil.which("victoria-metrics") or "victoria-metrics", f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.workdir / 'vm'}", "-retentionPeriod=100y", "-loggerLevel=ERROR", *tls]

    def ready(self) -> bool:
        return self.http("/health")[0] == 200

    def export(self, match: str) -> list[dict]:
        """Every sample matching; waits until the answer stops changing, since VictoriaMetrics
        makes freshly written samples searchable only after a short delay."""
        params = urllib.parse.urlencode({"match[]": match})
        last, stable_since = None, time.monotonic()
        deadline = time.monotonic() + 5
        while True:
            self.http("/internal/force_flush")
            status, body = self.http(f"/api/v1/export?{params}")
            assert status == 200, body
            if body != last:
                last, stable_since = body, time.monotonic()
            elif time.monotonic() - stable_since >= 0.6 or time.monotonic() > deadline:
                return [json.loads(line) for line in body.splitlines() if line.strip()]
            time.sleep(0.15)

