"""The head-office rig, from the shipped files in deploy/headoffice/: the shipped mosquitto
configuration with its placeholders filled in, head office's CA and certificates, and a
mosquitto started the way Debian's package runs it. Shared by tests/test_headoffice.py and
bench/fleet.py."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from servers import Server

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "headoffice"


def render(name: str, **values: str) -> str:
    """A shipped file with its @NAME@ placeholders filled in, as the README tells the installer."""
    text = (DEPLOY / "mosquitto" / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = [line for line in text.splitlines() if "@" in line and not line.lstrip().startswith("#")]
    assert not left, f"{name}: placeholders left: {left}"
    return text


def make_certs(d: Path, clients: list[str]) -> Path:
    """Head office's CA, the central broker's certificate for 127.0.0.1, and a client
    certificate per estate (CN = its site id) and for a consumer."""
    d.mkdir()

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "headoffice-ca.pem", "-days", "2", "-subj", "/CN=test CA")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ["central", *clients]:
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
            f"/CN={'127.0.0.1' if name == 'central' else name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "headoffice-ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", *(["-extfile", "san.ext"] if name == "central" else []))
    return d


class Broker(Server):
    """mosquitto with a main file like Debian's (persistence, log) and one conf.d file."""

    name = "mosquitto"

    def __init__(self, workdir: Path, conf_d: Callable[[int], str]):
        workdir.mkdir()
        super().__init__(workdir)
        self.conf = workdir / "mosquitto.conf"
        main = ["persistence true", f"persistence_location {workdir}/", "autosave_interval 1",
                f"log_dest file {self.log}", "log_type all", "connection_messages true"]
        if os.geteuid() == 0:
            main.append("user root")
        self.conf.write_text("\n".join(main) + "\n" + conf_d(self.port))

    def command(self) -> list[str]:
        return ["/usr/sbin/mosquitto", "-c", str(self.conf)]

    def ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
