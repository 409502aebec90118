"""A raw Modbus TCP server on loopback whose every answer is scripted, to test the answer path.

The simulators (simulators/modbus_server.py) answer like well-behaved meters; this server sends
whatever bytes the test's script returns for each request: oversized, odd, short, from another
unit or transaction, with another function code, late, or nothing at all. It serves MBAP
("socket") framing or RTU framing over TCP (a serial server in transparent mode), one request at
a time per connection, as a serial server does.
"""

from __future__ import annotations

import asyncio
import inspect
import struct
from dataclasses import dataclass
from typing import Awaitable, Callable

from simulators.modbus_server import crc16


@dataclass(frozen=True)
class Request:
    framing: str      # "socket" or "rtu"
    tid: int          # the MBAP transaction id (0 with RTU framing)
    unit: int
    function: int
    address: int
    count: int


Script = Callable[[Request], "bytes | None | Awaitable[bytes | None]"]


def read_pdu(function: int, registers: list[int], byte_count: int | None = None) -> bytes:
    """A read answer's PDU; `byte_count` may lie about the data that follows."""
    data = b"".join(struct.pack(">H", r & 0xFFFF) for r in registers)
    return bytes([function, len(data) if byte_count is None else byte_count & 0xFF]) + data


def adu(req: Request, pdu: bytes, *, unit: int | None = None, tid: int | None = None,
        protocol: int = 0, length: int | None = None) -> bytes:
    """Wrap a PDU for the wire in the request's framing; any header field may be overridden."""
    unit = req.unit if unit is None else unit
    if req.framing == "rtu":
        body = bytes([unit]) + pdu
        return body + crc16(body).to_bytes(2, "little")
    length = len(pdu) + 1 if length is None else length
    return struct.pack(">HHHB", req.tid if tid is None else tid, protocol, length & 0xFFFF, unit) + pdu


class FakeModbusServer:
    """`async with FakeModbusServer(script, framing) as server:` then connect to `server.port`."""

    def __init__(self, script: Script, framing: str = "socket"):
        self.script = script
        self.framing = framing
        self.requests: list[Request] = []
        self.errors: list[Exception] = []  # raised by the script: the test's own bug
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task] = set()

    async def __aenter__(self) -> "FakeModbusServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> Request:
        if self.framing == "socket":
            tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
            pdu = await reader.readexactly(length - 1)
        else:  # a read request in RTU is 8 bytes: unit, function, address, count, CRC
            frame = await reader.readexactly(8)
            tid, unit, pdu = 0, frame[0], frame[1:6]
        function, address, count = struct.unpack(">BHH", pdu[:5])
        return Request(self.framing, tid, unit, function, address, count)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(asyncio.current_task())
        try:
            while True:
                req = await self._read_request(reader)
                self.requests.append(req)
                answer = self.script(req)
                if inspect.isawaitable(answer):
                    answer = await answer
                if answer:
                    writer.write(answer)  # one write: one segment on loopback
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # the server is closing: end this connection quietly
        except Exception as e:
            self.errors.append(e)
            raise
        finally:
            self._conns.discard(asyncio.current_task())
            writer.close()
