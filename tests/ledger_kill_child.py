"""A process that writes readings into a ledger until it is killed (tests/test_ledger_write.py).

`python ledger_kill_child.py PATH MODE`: after each commit it prints "committed N" (readings
committed so far); MODE "batch" prints "group" between two transactions of a per-meter batch
(and waits 20 ms there), "checkpoint" prints "checkpoint" when a checkpoint begins and
"checkpointed" when it is done.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gateway.ledger.indexer as indexer  # noqa: E402
from gateway.events import Reading  # noqa: E402
from gateway.ledger.checkpoint import Checkpointer  # noqa: E402
from gateway.ledger import Ledger  # noqa: E402

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
_said = threading.Lock()


def say(text: str) -> None:
    """One whole line (the worker threads speak too)."""
    with _said:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def main() -> None:
    path, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "batch":
        move = indexer.move

        def noisy(db, batch_rows=indexer.BATCH_ROWS, group_rows=indexer.GROUP_ROWS, pause=None, **kw):
            def between():
                say("group")
                time.sleep(0.02)
            return move(db, batch_rows, group_rows, between, **kw)
        indexer.move = noisy
        ledger = Ledger(path, index={"tail_rows": 3000, "group_rows": 300})
    else:
        run_once = Checkpointer.run_once

        def noisy_ckpt(self, db):
            say("checkpoint")
            try:
                return run_once(self, db)
            finally:
                say("checkpointed")
        Checkpointer.run_once = noisy_ckpt
        ledger = Ledger(path, wal_bytes=4 * 1024 * 1024)
    start = ledger.count_readings()
    n = 0
    while True:
        for _ in range(300):
            k = start + n
            ts = T0 + timedelta(seconds=k)
            ledger.add(Reading(f"m{k % 29}", ts, {"voltage_v": 230.0 + k % 10, "current_a": 1.5, "power_kw": 0.3,
                                                  "energy_kwh": k / 100},
                               {"energy_kwh": Decimal(k) / 100}))
            n += 1
        ledger.flush()
        say(f"committed {start + n}")


if __name__ == "__main__":
    main()
