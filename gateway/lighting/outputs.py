"""The outputs a lighting circuit is switched by, behind one small interface.

A `ModbusPort` writes a relay module's coil (FC05) or holding register (FC06) and reads it back
(FC01/FC03) through the bus's own scheduler (`PolledBus.submit`), so a command takes its turn on
the line between two polls: one request at a time on RS-485. An `MqttPort` publishes the
switch's command payload and takes its state from the state topic. Both speak "lit" (the
lights on), so an inverted output is inverted here and nowhere else.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from ..config import ModbusOutput, MqttOutput
from ..drivers.scheduler import NoAnswer, PollError


class ModbusPort:
    def __init__(self, output: ModbusOutput, bus, timeout_s: float | None = None):
        self.output = output
        self.bus = bus
        self.timeout_s = timeout_s or bus.bus.timeout_s
        self.where = f"bus {output.bus} unit {output.unit} {output.kind} {output.address}"

    def _value(self, lit: bool) -> int:
        on = lit != self.output.inverted
        if self.output.kind == "coil":
            return int(on)
        return self.output.on_value if on else self.output.off_value

    async def write(self, lit: bool) -> None:
        o = self.output
        await self.bus.write_output(o.unit, o.kind, o.address, self._value(lit), self.timeout_s)

    async def read(self) -> bool:
        """Whether the output says lit; a value that is neither on_value nor off_value is a
        PollError (a module that holds something else in that register)."""
        o = self.output
        value = await self.bus.read_output(o.unit, o.kind, o.address, self.timeout_s)
        if o.kind == "holding" and value not in (o.on_value, o.off_value):
            raise PollError(f"register {o.address} holds {value}, neither on_value {o.on_value} nor off_value "
                            f"{o.off_value}")
        on = bool(value) if o.kind == "coil" else value == o.on_value
        return on != o.inverted


class MqttPort:
    """A smart switch: command by publishing, state from its state topic (retained or sent
    after each command, as such switches do)."""

    def __init__(self, output: MqttOutput, link, timeout_s: float = 5.0):
        self.output = output
        self.link = link
        self.timeout_s = timeout_s
        self.where = f"MQTT {output.command_topic}"
        self.state: bool | None = None
        self.state_at: datetime | None = None
        self._changed = asyncio.Event()
        link.subscribe(output.state_topic, self._on_state)

    def _on_state(self, topic: str, payload: bytes, at: datetime) -> None:
        text = payload.decode("utf-8", "replace").strip()
        o = self.output
        if text == (o.state_on or o.payload_on):
            on = True
        elif text == (o.state_off or o.payload_off):
            on = False
        else:
            return  # not a state we know: bad input, ignored
        self.state, self.state_at = on != o.inverted, at
        self._changed.set()

    async def write(self, lit: bool) -> None:
        o = self.output
        self._changed.clear()
        if not await self.link.publish(o.command_topic, o.payload_on if lit != o.inverted else o.payload_off):
            raise NoAnswer(f"cannot publish to {o.command_topic} (broker not connected)")

    async def read(self) -> bool:
        if self.state is None or not self._changed.is_set():
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._changed.wait()
            except TimeoutError:
                if self.state is None:
                    raise NoAnswer(f"no state on {self.output.state_topic} within {self.timeout_s:g} s") from None
        return self.state


def make_ports(cfg, buses: dict, link=None) -> dict:
    """output id -> port, for the outputs the lighting circuits use."""
    used = {o for c in cfg.lighting.circuits for o in c.outputs}
    ports = {}
    for o in cfg.outputs:
        if o.id not in used:
            continue
        if o.type == "modbus":
            ports[o.id] = ModbusPort(o, buses[o.bus], cfg.lighting.timeout_s)
        elif link is not None:
            ports[o.id] = MqttPort(o, link)
    return ports
