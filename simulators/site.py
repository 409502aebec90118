"""A whole site of simulated meters: one server per bus of a site config, one SimMeter per meter."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any, Callable

from gateway.config import ModbusTcpBus, SiteConfig, parse_site

from .dlt645 import Dlt645PtyServer, Dlt645SimMeter
from .meters import SimMeter
from .modbus_server import LineTiming, MbapServer, ModbusLineServer, RtuPtyServer, RtuTcpServer
from .relays import Contactor, SimRelayModule


def meter_seed(seed: int, meter_id: str) -> int:
    """Each meter's own seed: stable across runs and independent of the order of the file."""
    digest = hashlib.blake2b(f"{seed}:{meter_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class SiteSimulation:
    """Simulators for every bus and meter of `cfg`, speaking each bus's own transport.

    Serial servers behind modbus_tcp buses are assumed to drive a 9600 8N1 line when
    `line_speed` is on; modbus_rtu buses use their configured line settings. A dlt645 bus is a
    pty with DL/T 645 meters (simulators/dlt645.py), keyed by address, that answer only at the
    bus's baud rate.
    """

    def __init__(self, cfg: SiteConfig, *, seed: int = 1, line_speed: bool = False,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self._meters: dict[str, SimMeter] = {}
        by_bus: dict[str, dict] = {b.id: {} for b in cfg.buses}
        site = cfg.site
        for m in cfg.meters:  # disabled meters still hang on the wire
            if m.address is not None:  # on a dlt645 bus (the config checks say so)
                sim = Dlt645SimMeter(cfg.models[m.model], m.address, m.circuit, meter_seed(seed, m.id), clock,
                                     site.timezone, latitude=site.latitude, longitude=site.longitude)
                by_bus[m.bus][m.address] = sim
            else:
                sim = SimMeter(cfg.models[m.model], m.unit, m.circuit, meter_seed(seed, m.id), clock,
                               site.timezone, latitude=site.latitude, longitude=site.longitude)
                by_bus[m.bus][m.unit] = sim
            self._meters[m.id] = sim
        self._wire_lighting(cfg, by_bus, clock)
        self.servers: dict[str, ModbusLineServer] = {}
        for bus in cfg.buses:
            units = by_bus[bus.id]
            if isinstance(bus, ModbusTcpBus):
                timing = LineTiming() if line_speed else None
                cls = MbapServer if bus.framer == "socket" else RtuTcpServer
                self.servers[bus.id] = cls(units, timing)
            elif bus.type == "dlt645":
                line = LineTiming(bus.baudrate, bus.bytesize, bus.parity, bus.stopbits)
                self.servers[bus.id] = Dlt645PtyServer(units, line if line_speed else None, line=line)
            else:
                timing = (LineTiming(bus.baudrate, bus.bytesize, bus.parity, bus.stopbits)
                          if line_speed else None)
                self.servers[bus.id] = RtuPtyServer(units, timing)
        self._started = False

    def _wire_lighting(self, cfg: SiteConfig, by_bus: dict[str, dict], clock) -> None:
        """Relay modules for the site's Modbus outputs, each output driving a contactor, and the
        lighting circuits' meters fed by their contactors: what the gateway switches is what
        the meters measure. Outputs start off, as a module fresh from the factory."""
        self.relays: dict[tuple[str, int], SimRelayModule] = {}
        self.contactors: dict[str, Contactor] = {}
        for o in cfg.outputs:
            if o.type != "modbus":
                continue
            key = (o.bus, o.unit)
            if key not in self.relays:
                top = max(x.address for x in cfg.outputs if x.type == "modbus" and (x.bus, x.unit) == key)
                self.relays[key] = SimRelayModule(o.unit, channels=max(16, top + 1), kind=o.kind)
                by_bus[o.bus][o.unit] = self.relays[key]
            self.contactors[o.id] = Contactor(clock, inverted=o.inverted)
            self.relays[key].wire(o.address, self.contactors[o.id])
        for c in cfg.lighting.circuits:
            feeds = [self.contactors[o] for o in c.outputs if o in self.contactors]
            if not feeds:
                continue
            for mid in c.meters:
                self._meters[mid].feed = lambda t, feeds=feeds: any(k.energized(t) for k in feeds)

    def relay(self, output_id: str) -> SimRelayModule:
        """The relay module that carries an output."""
        o = self.cfg.output(output_id)
        return self.relays[(o.bus, o.unit)]

    def contactor(self, output_id: str) -> Contactor:
        return self.contactors[output_id]

    @property
    def meters(self) -> dict[str, SimMeter]:
        return self._meters

    def meter(self, meter_id: str) -> SimMeter:
        return self._meters[meter_id]

    async def start(self) -> None:
        try:
            await asyncio.gather(*(s.start() for s in self.servers.values()))
        except BaseException:
            await self.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers.values()), return_exceptions=True)
        self._started = False

    async def __aenter__(self) -> SiteSimulation:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def bus_overrides(self) -> dict[str, dict[str, Any]]:
        """Per bus id, the config keys that point the gateway at this simulation."""
        if not self._started:
            raise RuntimeError("start the simulation first: ports are chosen at start")
        out: dict[str, dict[str, Any]] = {}
        for bus_id, server in self.servers.items():
            if isinstance(server, Dlt645PtyServer):
                # Linux refuses parity on a pty (tcsetattr fails with EINVAL when PARENB is all
                # that changes, as pyserial's second configure does): the simulated DL/T 645
                # line is 8N1 at the bus's baud rate.
                out[bus_id] = {"port": server.port_path, "parity": "N"}
            elif isinstance(server, RtuPtyServer):
                out[bus_id] = {"port": server.port_path}
            else:
                out[bus_id] = {"host": server.host, "port": server.port}
        return out

    def patched_config(self) -> SiteConfig:
        """A copy of the site config whose buses lead to the simulators."""
        data = self.cfg.model_dump(mode="json", by_alias=True)
        overrides = self.bus_overrides
        for bus in data.get("buses", []):
            bus.update(overrides.get(bus["id"], {}))
        return parse_site(data, base_dir=self.cfg.base_dir, source="simulated site")
