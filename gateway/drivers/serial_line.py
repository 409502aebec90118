"""A serial line that stays open: reopened with back-off when the device goes away.

Card readers and patrol wands hang on USB-serial adapters that get unplugged; the driver
says so once per episode and keeps trying, and never stops the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import serial
import serial_asyncio_fast

from ..backoff import Backoff

log = logging.getLogger(__name__)

PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class SerialLine:
    def __init__(self, what: str, cfg, on_data: Callable[[bytes], None], backoff_max_s: float = 30.0,
                 on_status: Callable[[bool, str], None] | None = None):
        self.what = what          # e.g. "card reader gate-n-in"
        self.cfg = cfg            # port, baudrate, bytesize, parity, stopbits
        self.on_data = on_data
        self.on_status = on_status  # (online, reason): a reader's DeviceStatus for the rules
        self.backoff_max_s = backoff_max_s
        self.opened = 0
        self.bytes = 0
        self.connected = False
        self._problem = ""

    async def run(self) -> None:
        backoff = Backoff(0.5, self.backoff_max_s)
        while True:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=self.cfg.port, baudrate=self.cfg.baudrate, bytesize=self.cfg.bytesize,
                    parity=PARITY[self.cfg.parity], stopbits=self.cfg.stopbits)
            except (OSError, serial.SerialException) as e:
                self._trouble(f"cannot open {self.cfg.port}: {e}")
                await asyncio.sleep(backoff.failed())
                continue
            backoff.reset()
            self.opened += 1
            self.connected = True
            if self.on_status and (self._problem or self.opened == 1):
                self.on_status(True, f"{self.cfg.port} open")
            if self._problem:
                log.info("%s: %s open again", self.what, self.cfg.port)
                self._problem = ""
            try:
                while True:
                    data = await reader.read(4096)
                    if not data:
                        raise serial.SerialException("device closed")
                    self.bytes += len(data)
                    self.on_data(data)
            except (OSError, serial.SerialException) as e:
                self._trouble(f"{self.cfg.port} lost: {e}")
            finally:
                self.connected = False
                writer.close()
            await asyncio.sleep(0.5)

    def _trouble(self, why: str) -> None:
        if not self._problem:
            log.error("%s: %s; retrying", self.what, why)
            if self.on_status:
                self.on_status(False, why)
        self._problem = why
