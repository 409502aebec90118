"""A smart switch on MQTT as a lighting output, through a real mosquitto: command published, the
switch's state read back; a switch that does not answer is a NoAnswer, not a guess."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from gateway.config import MqttOutput
from gateway.drivers.scheduler import NoAnswer
from gateway.lighting.outputs import MqttPort
from gateway.mqtt import MqttLink, MqttSettings
from mosquitto import mqtt_broker  # noqa: F401


async def switch(port: int, ready: asyncio.Event, got: list[str], answer: bool = True) -> None:
    """A Tasmota-like switch: takes `cmnd/.../POWER`, says its state on `stat/.../POWER` (retained)."""
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.subscribe("cmnd/sw1/POWER", qos=1)
        ready.set()
        async for m in c.messages:
            got.append(m.payload.decode())
            if answer:
                await c.publish("stat/sw1/POWER", m.payload, qos=1, retain=True)


@pytest.mark.parametrize("inverted", [False, True])
async def test_mqtt_switch_is_commanded_and_read_back(mqtt_broker, inverted):  # noqa: F811
    broker = mqtt_broker()
    out = MqttOutput(id="sw-1", type="mqtt", command_topic="cmnd/sw1/POWER", state_topic="stat/sw1/POWER",
                     inverted=inverted)
    link = MqttLink(MqttSettings(host="127.0.0.1", port=broker.port, client_id="gw-test"))
    port = MqttPort(out, link, timeout_s=3)
    ready, commands = asyncio.Event(), []
    sw = asyncio.create_task(switch(broker.port, ready, commands))
    run = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(ready.wait(), 10)
        async with asyncio.timeout(10):
            while not link.connected:
                await asyncio.sleep(0.05)
        await port.write(True)
        assert await port.read() is True
        await port.write(False)
        assert await port.read() is False
    finally:
        link.stop()
        await asyncio.gather(run, return_exceptions=True)
        sw.cancel()
        await asyncio.gather(sw, return_exceptions=True)
    # what went on the wire: an inverted output (a normally-closed contactor) is commanded the other way
    assert commands == (["OFF", "ON"] if inverted else ["ON", "OFF"])


async def test_a_switch_that_does_not_answer_is_no_answer(mqtt_broker):  # noqa: F811
    broker = mqtt_broker()
    out = MqttOutput(id="sw-1", type="mqtt", command_topic="cmnd/sw1/POWER", state_topic="stat/sw1/POWER")
    link = MqttLink(MqttSettings(host="127.0.0.1", port=broker.port, client_id="gw-test"))
    port = MqttPort(out, link, timeout_s=0.5)
    ready = asyncio.Event()
    sw = asyncio.create_task(switch(broker.port, ready, [], answer=False))
    run = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(ready.wait(), 10)
        async with asyncio.timeout(10):
            while not link.connected:
                await asyncio.sleep(0.05)
        await port.write(True)
        with pytest.raises(NoAnswer, match="no state on stat/sw1/POWER"):
            await port.read()
    finally:
        link.stop()
        await asyncio.gather(run, return_exceptions=True)
        sw.cancel()
        await asyncio.gather(sw, return_exceptions=True)
