"""What a driver published, collected for the driver tests."""

from __future__ import annotations

import math

from gateway.events import DeviceStatus, Reading


class Collector:
    def __init__(self):
        self.events = []

    def __call__(self, e):
        self.events.append(e)

    def readings(self, meter=None) -> list[Reading]:
        return [e for e in self.events if isinstance(e, Reading) and (meter is None or e.meter == meter)]

    def statuses(self, device) -> list[DeviceStatus]:
        return [e for e in self.events if isinstance(e, DeviceStatus) and e.device == device]

    def online_changes(self, device) -> list[bool]:
        return [e.online for e in self.statuses(device)]

    def bus_statuses(self) -> list[DeviceStatus]:
        return [e for e in self.events if isinstance(e, DeviceStatus) and e.kind == "bus"]


def assert_reads_as(reading: Reading, expected: dict[str, float]):
    assert set(reading.values) == set(expected)
    for k, v in expected.items():
        assert math.isclose(reading.values[k], v, rel_tol=1e-6, abs_tol=1e-9), (reading.meter, k, reading.values[k], v)
