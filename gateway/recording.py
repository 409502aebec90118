"""`gateway run --record FILE`: the raw device traffic the gateway sees, as JSON lines.

One record per line, in arrival order, times as UTC epoch seconds:
  {"type": "header", "version": 1, "site": "wanhu", "t": ...}
  {"type": "poll", "t": ..., "bus": "bus-n1", "meter": "B01-stair",
   "exchanges": [{"fn": 4, "addr": 8192, "count": 16, "regs": [...]} | {"error": "NoAnswer", "detail": "..."}]}
  {"type": "serial", "t": ..., "device": "gate-n-in", "data": "<hex of the bytes read>"}
  {"type": "mqtt", "t": ..., "topic": "...", "payload": "<text>"}   (or "payload_hex" when not UTF-8)
  {"type": "ack", "t": ..., "rule": "...", "source": "...", "by": "...", "note": "..."}
  {"type": "replacement", "t": ..., "meter": "...", "at": ..., "old_final": "...", "new_initial": "..."}
People's actions are recorded too (an acknowledgement names its alert by rule and source, since
an alert's id carries its raise time, which a replay may reproduce a fraction of a second off).
`gateway replay` feeds such a file through the real drivers and rules under a simulated clock.
Card frames hold card numbers in clear: the file is the gateway user's alone (0600).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from .private import open_private_append

VERSION = 1


class Recorder:
    def __init__(self, path: Path, site: str, now: datetime):
        self.path = Path(path)
        self._f = open_private_append(self.path)
        self.records = 0
        self._write({"type": "header", "version": VERSION, "site": site, "t": now.timestamp()})

    def _write(self, rec: dict) -> None:
        self._f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.records += 1

    def poll(self, ts: datetime, bus: str, meter: str, exchanges: list) -> None:
        self._write({"type": "poll", "t": ts.timestamp(), "bus": bus, "meter": meter, "exchanges": exchanges})

    def serial(self, ts: datetime, device: str, data: bytes) -> None:
        self._write({"type": "serial", "t": ts.timestamp(), "device": device, "data": data.hex()})

    def mqtt(self, ts: datetime, topic: str, payload: bytes) -> None:
        try:
            body = {"payload": payload.decode("utf-8")}
        except UnicodeDecodeError:
            body = {"payload_hex": payload.hex()}
        self._write({"type": "mqtt", "t": ts.timestamp(), "topic": topic, **body})

    def ack(self, ts: datetime, rule: str, source: str, by: str, note: str) -> None:
        self._write({"type": "ack", "t": ts.timestamp(), "rule": rule, "source": source, "by": by, "note": note})

    def replacement(self, ts: datetime, meter: str, at: datetime, old_final, new_initial) -> None:
        self._write({"type": "replacement", "t": ts.timestamp(), "meter": meter, "at": at.timestamp(),
                     "old_final": str(old_final), "new_initial": str(new_initial)})

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read(path: Path):
    """Records of a recording, header first; a line that is not JSON comes as {"type": "bad"}."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except ValueError:
                yield {"type": "bad", "line": n}
