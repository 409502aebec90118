"""The monthly service and safety report as InfluxDB points (outbox rows), for Grafana.

All at the month's start (ms), tagged with the site and the month, so building the month again
overwrites its points instead of adding to them (the allocation's points do the same):
- `service_month`: the headline (alarms, orders, shares on time, patrol completeness, refusals);
- `service_alarms` per kind, `service_orders` per category, `service_inspections` per plan,
  `service_patrol` per route and per guard (tag `level`), `service_access` per gate;
- `service_repeat` per flagged device.
Durations are seconds; a figure that does not exist (no alarm acknowledged) is left out of the
point rather than written as zero. A point whose tags line protocol cannot carry is left out.
"""

from __future__ import annotations

from ..sinks.lineprotocol import Unwritable, line
from .service_report import Durations, ServiceMonth

PRIORITY = 6        # shed with the allocation's, after alerts and readings


def _times(prefix: str, d: Durations) -> dict:
    return {f"{prefix}_{k}_s": v for k, v in (("p50", d.p50), ("p90", d.p90), ("mean", d.mean)) if v is not None}


def _fields(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def outbox_rows(report: ServiceMonth) -> list[tuple]:
    ts_ms = report.start_us // 1000
    base = {"site": report.site_id, "month": report.month}
    out: list[tuple] = []

    def point(measurement: str, tags: dict, fields: dict) -> None:
        try:
            text = line(measurement, {**base, **tags}, _fields(fields), ts_ms)
        except Unwritable:
            return
        if text is not None:
            out.append((measurement, PRIORITY, ts_ms, text, None))

    h = report.headline()
    point("service_month", {}, {"alarms": h.alarms, "ack_p50_s": h.ack_p50_s, "orders": h.orders,
                                "response_on_time": h.response_on_time, "repair_on_time": h.repair_on_time,
                                "inspections_on_time": h.inspections_on_time,
                                "patrol_completeness": h.patrol_completeness, "card_refusals": h.card_refusals,
                                "forced_doors": h.forced_doors,
                                "repeat_devices": sum(1 for r in report.repeats if r.flagged)})
    for a in report.alarms:
        point("service_alarms", {"kind": a.kind}, {"raised": a.raised, "acked": a.acked, "cleared": a.cleared,
                                                   "open": a.open, **_times("ack", a.to_ack),
                                                   **_times("clear", a.to_clear)})
    for o in report.orders:
        point("service_orders", {"category": o.category},
              {"created": o.created, "responded": o.responded, "response_on_time": o.response_on_time,
               "response_missed": o.response_missed, "done": o.done, "repair_on_time": o.repair_on_time,
               "repair_missed": o.repair_missed, "open": o.open, "reopened": o.reopened,
               "satisfaction": o.satisfaction, **_times("response", o.response), **_times("repair", o.repair)})
    for i in report.inspections:
        point("service_inspections", {"plan": i.plan}, {"due": i.due, "on_time": i.on_time, "late": i.late,
                                                        "not_done": i.not_done, "failed_items": i.failed_items})
    for level, rows in (("route", report.routes), ("guard", report.guards)):
        for r in rows:
            point("service_patrol", {"level": level, level: r.key or "-"},
                  {"rounds": r.rounds, "due": r.due, "read": r.read, "on_time": r.on_time, "late": r.late,
                   "early": r.early, "missed": r.missed, "completeness": r.completeness})
    for g in report.gates:
        point("service_access", {"gate": g.door}, {"unknown": g.unknown, "revoked": g.revoked, "expired": g.expired,
                                                   "forced_open": g.forced_open, "held_open": g.held_open})
    for r in report.repeats:
        if r.flagged:
            point("service_repeat", {"device": r.device}, {"orders": r.in_window, "in_month": r.in_month})
    return out
