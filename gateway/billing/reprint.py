"""Print a signed run's reports again in a process of its own, for the console.

At an estate's size (9,216 households) the workbook and the HTML take seconds of CPU and over a
hundred MB: inside the gateway that would share the interpreter with the polling loop and keep
the memory afterwards. The console starts `python -m gateway.billing.reprint` with the site (as
JSON, on stdin) and waits for it off its event loop; one line per report that could not be
written comes back on stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from ..config import SiteConfig


def request(cfg: SiteConfig, run_id: int, superseded: list[int]) -> bytes:
    return json.dumps({"site": cfg.model_dump(mode="json", exclude_none=True), "base_dir": str(cfg.base_dir),
                       "run": run_id, "superseded": superseded}, ensure_ascii=False).encode()


async def reprint_in_child(cfg: SiteConfig, run_id: int, superseded: list[int]) -> list[str]:
    """Problems, one line each (empty: every report was written)."""
    package_root = str(Path(__file__).resolve().parents[2])     # this very code, whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.billing.reprint", env=env,
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(request(cfg, run_id, superseded))
    lines = [x for x in out.decode(errors="replace").splitlines() if x.strip()]
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        lines.append(f"the reports of run {run_id} could not be printed again: {tail[0]}")
    return lines


def main() -> int:
    from ..config import parse_site
    from ..ledger import Ledger
    from .runs import reprint_signed
    req = json.loads(sys.stdin.read())
    cfg = parse_site(req["site"], base_dir=Path(req["base_dir"]))
    ledger = Ledger(cfg.storage_path)
    try:
        _, errors = reprint_signed(cfg, ledger, int(req["run"]), [int(x) for x in req["superseded"]])
    finally:
        ledger.close()
    for line in errors:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
