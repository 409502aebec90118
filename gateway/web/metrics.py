"""/metrics for Prometheus: polls, failures and utilisation per bus, the outbox, alerts by state,
the console's live clients. Collected at scrape time from the running gateway and the ledger."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class _Collector:
    def __init__(self, ctx):
        self.ctx = ctx

    def collect(self):
        ctx = self.ctx
        gw = ctx.gateway
        up = GaugeMetricFamily("gateway_uptime_seconds", "Seconds since the console started")
        up.add_metric([], time.monotonic() - ctx.started)
        yield up
        if gw is not None:
            polls = CounterMetricFamily("gateway_polls", "Meter polls per bus", labels=["bus"])
            fails = CounterMetricFamily("gateway_poll_failures", "Failed meter polls per bus", labels=["bus"])
            busy = CounterMetricFamily("gateway_bus_busy_seconds", "Time each bus spent in exchanges "
                                       "(its rate is the bus utilisation)", labels=["bus"])
            util = GaugeMetricFamily("gateway_bus_utilisation", "Share of the time since start the bus was busy",
                                     labels=["bus"])
            online = GaugeMetricFamily("gateway_meters", "Meters per bus by state", labels=["bus", "state"])
            elapsed = max(1e-9, time.monotonic() - ctx.started)
            for b in gw.buses:
                s = b.stats()
                polls.add_metric([s["bus"]], s["polls"])
                fails.add_metric([s["bus"]], s["failures"])
                busy.add_metric([s["bus"]], s["busy_s"])
                util.add_metric([s["bus"]], min(1.0, s["busy_s"] / elapsed))
                online.add_metric([s["bus"], "online"], s["online"])
                online.add_metric([s["bus"], "offline"], s["offline"])
            yield from (polls, fails, busy, util, online)
            if gw.ledger is not None:
                readings = CounterMetricFamily("gateway_readings_stored", "Readings committed to the ledger")
                readings.add_metric([], gw.ledger.readings_written)
                depth = GaugeMetricFamily("gateway_outbox_depth", "Points waiting for InfluxDB")
                depth.add_metric([], gw.ledger.outbox_depth)
                size = GaugeMetricFamily("gateway_outbox_bytes", "Bytes waiting for InfluxDB")
                size.add_metric([], gw.ledger.outbox_bytes)
                yield from (readings, depth, size)
        alerts = GaugeMetricFamily("gateway_alerts", "Alerts by state and severity", labels=["state", "severity"])
        with ctx.db() as db:
            rows = db.execute("SELECT state, severity, count(*) FROM alerts WHERE state != 'cleared' "
                              "GROUP BY state, severity").fetchall() if db else []
        counts = {(s, v): n for s, v, n in rows}
        for state in ("active", "acknowledged"):
            for sev in ("critical", "warning", "info"):
                alerts.add_metric([state, sev], counts.get((state, sev), 0))
        yield alerts
        if ctx.broadcaster is not None:
            clients = GaugeMetricFamily("gateway_web_clients", "Pages connected for live updates")
            clients.add_metric([], len(ctx.broadcaster.clients))
            yield clients


def exposition(ctx) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(ctx))
    return generate_latest(registry), CONTENT_TYPE_LATEST
