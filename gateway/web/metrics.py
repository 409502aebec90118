"""/metrics for Prometheus: the status read model (meters by state, the outbox, the last write to
InfluxDB, the clock, the disk) and the running gateway's poll counters, alerts by state, the
console's live clients. Collected at scrape time."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..ledger.queries import alert_counts, read_status


def _gauge(name: str, doc: str, value, labels: list[str] | None = None) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels)
    if value is not None:
        g.add_metric([], value)
    return g


class _Collector:
    def __init__(self, ctx, counters):
        self.ctx, self.counters = ctx, counters

    def collect(self):
        ctx = self.ctx
        gw = ctx.gateway
        yield _gauge("gateway_uptime_seconds", "Seconds since the console started", time.monotonic() - ctx.started)
        counters = self.counters
        with ctx.db() as db:
            st = read_status(ctx.cfg, db, counters)
            alerts_now = alert_counts(db) if db is not None else {}
        now_s = time.time()
        online = GaugeMetricFamily("gateway_meters", "Meters per bus by state (online, offline, never seen)",
                                   labels=["bus", "state"])
        for b in st.buses:
            for state in ("online", "offline", "never"):
                online.add_metric([b.id, state], b.count(state))
        yield online
        if counters is not None:
            polls = CounterMetricFamily("gateway_polls", "Meter polls per bus", labels=["bus"])
            fails = CounterMetricFamily("gateway_poll_failures", "Failed meter polls per bus", labels=["bus"])
            busy = CounterMetricFamily("gateway_bus_busy_seconds", "Time each bus spent in exchanges "
                                       "(its rate is the bus utilisation)", labels=["bus"])
            util = GaugeMetricFamily("gateway_bus_utilisation", "Share of the time since start the bus was busy",
                                     labels=["bus"])
            elapsed = max(1e-9, time.monotonic() - ctx.started)
            for b in st.buses:
                c = b.counters
                if c is None:
                    continue
                polls.add_metric([b.id], c.polls)
                fails.add_metric([b.id], c.failures)
                busy.add_metric([b.id], c.busy_s)
                util.add_metric([b.id], min(1.0, c.busy_s / elapsed))
            yield from (polls, fails, busy, util)
        if gw is not None and getattr(gw, "ledger", None) is not None:
            readings = CounterMetricFamily("gateway_readings_stored", "Readings committed to the ledger")
            readings.add_metric([], gw.ledger.readings_written)
            yield readings
        o = st.outbox
        if o is not None:
            yield _gauge("gateway_outbox_depth", "Points waiting for InfluxDB", o.depth)
            yield _gauge("gateway_outbox_bytes", "Bytes waiting for InfluxDB", o.bytes)
            yield _gauge("gateway_outbox_oldest_age_seconds", "Age of the oldest point waiting for InfluxDB",
                         None if o.oldest_us is None else max(0.0, now_s - o.oldest_us / 1e6))
            yield _gauge("gateway_influxdb_last_write_age_seconds", "Seconds since InfluxDB last accepted a batch",
                         None if o.last_write_us is None else max(0.0, now_s - o.last_write_us / 1e6))
            yield _gauge("gateway_outbox_rejected", "Points InfluxDB refused as bad data, set aside", o.rejected)
        yield _gauge("gateway_clock_untrusted", "1 while the wall clock is not trusted (records are held back)",
                     int(st.clock["untrusted_now"]))
        yield _gauge("gateway_disk_free_bytes", "Free bytes on the ledger's file system", st.disk.free)
        yield _gauge("gateway_ledger_bytes", "The ledger's size on disk with its WAL", st.ledger_bytes)
        alerts = GaugeMetricFamily("gateway_alerts", "Alerts by state and severity", labels=["state", "severity"])
        for state in ("active", "acknowledged"):
            for sev in ("critical", "warning", "info"):
                alerts.add_metric([state, sev], alerts_now.get((state, sev), 0))
        yield alerts
        if ctx.broadcaster is not None:
            clients = GaugeMetricFamily("gateway_web_clients", "Pages connected for live updates")
            clients.add_metric([], len(ctx.broadcaster.clients))
            yield clients


def exposition(ctx, counters) -> tuple[bytes, str]:
    """Run off the event loop (it reads the ledger); `counters`: the buses' poll counters taken
    on the loop (views.health.bus_counters)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(ctx, counters))
    return generate_latest(registry), CONTENT_TYPE_LATEST
