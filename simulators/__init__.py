"""Simulated field devices that speak the real protocols on real transports (loopback, ptys)."""

from .meters import SimMeter
from .modbus_server import LineTiming, MbapServer, ModbusLineServer, RtuPtyServer, RtuTcpServer
from .site import SiteSimulation

__all__ = ["LineTiming", "MbapServer", "ModbusLineServer", "RtuPtyServer", "RtuTcpServer",
           "SimMeter", "SiteSimulation"]
