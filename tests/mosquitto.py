"""A real Mosquitto broker on loopback for integration tests (Debian package `mosquitto`).

Same pattern as servers.py: a process of the test session with its config, password file,
certificates and persistence file in a temporary directory, on a free port; `stop()` and
`start()` restart it on the same port with the same persistence, to make outages.

    broker = Mosquitto(tmp_path, users={"gw": "secret"}, tls=True)
    broker.start(); ...; broker.stop(); broker.start()

or, in a test, the `mqtt_broker` fixture (import it into the test module):
`broker = mqtt_broker(users=..., tls=...)` gives a started broker, stopped at the end of the test.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from servers import Server

MOSQUITTO = "/usr/sbin/mosquitto"


def write_password_file(path: Path, users: dict[str, str], use_tool: bool = True) -> None:
    """A mosquitto password file: with `mosquitto_passwd -b -c` if installed (it comes with the
    `mosquitto` package), else written here in mosquitto 2.0's `$7$` format
    (PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt)."""
    tool = shutil.which("mosquitto_passwd") if use_tool else None
    path.unlink(missing_ok=True)
    if tool:
        for i, (user, password) in enumerate(users.items()):
            subprocess.run([tool, "-b", *(["-c"] if i == 0 else []), str(path), user, password],
                           check=True, capture_output=True)
    else:
        lines = []
        for user, password in users.items():
            salt = secrets.token_bytes(12)
            digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
            lines.append(f"{user}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n")
        path.write_text("".join(lines))
    path.chmod(0o600)


class Mosquitto(Server):
    """A mosquitto process that can be stopped and started again on the same port and data."""

    name = "mosquitto"

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, tls: bool = False,
                 persistence: bool = True, password_tool: bool = True):
        super().__init__(workdir, tls)
        self.conf = workdir / "mosquitto.conf"
        self.persistence = persistence
        self.users = dict(users or {})
        self.password_file: Path | None = None
        if users is not None:
            self.password_file = workdir / "passwd"
            write_password_file(self.password_file, self.users, use_tool=password_tool)
        self._write_conf()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def _write_conf(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
            f"log_dest file {self.log}",  # flushed per line (stdout to a file is block-buffered)
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if os.geteuid() == 0:
            # mosquitto started as root drops to the `mosquitto` user, which cannot write here.
            lines.append("user root")
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.ca:
            lines += [f"cafile {self.ca}", f"certfile {self.cert}", f"keyfile {self.key}"]
        if self.persistence:
            # Saved on a clean stop (SIGTERM) and loaded on start: sessions of clean_session=False
            # clients, their subscriptions and queued/in-flight QoS 1 messages survive a restart.
            lines += ["persistence true", f"persistence_location {self.workdir}/",
                      "persistence_file mosquitto.db", "autosave_interval 1"]
        self.conf.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [MOSQUITTO, "-c", str(self.conf)]

    def ready(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=0.5):
            return True

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def mqtt_broker(tmp_path_factory):
    """Factory: `mosquitto(users=None, tls=False, persistence=True)` → a started broker, each in
    its own directory; all are stopped at the end of the test."""
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.fail(f"{MOSQUITTO} is not installed: run tools/setup-tests.sh (it installs the Debian packages)")
    brokers: list[Mosquitto] = []

    def make(**options) -> Mosquitto:
        broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), **options)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()
