"""An alert change as a message that stands alone: the contract for MQTT and the JSON webhook.

Head office receives the alarms of many estates through bridged brokers, and a bridge may
deliver a retained message several times or late after a reconnect. So every message says which
estate it is from (`site`, `site_name`), carries an id unique across estates (`alarm_id`:
`<site>/<rule>/<source>/<raised µs>`) and a revision that grows by one with every change of the
alarm (raised = 1; kept across restarts: gateway/rules/restore.py takes it back from the
ledger's history). A consumer keeps the highest revision it saw per (site, alarm_id) and ignores
anything at or below it: a duplicate, or a stale copy arriving after the clear.

The fields are listed in the README ("Alarm messages"); add fields, never rename or drop one.
"""

from __future__ import annotations

import json

from ..events import AlertChange

SCHEMA = 1      # raised when a field changes meaning; consumers may check it


def alert_body(change: AlertChange, site_id: str, site_name: str) -> dict:
    a = change.alert
    return {"schema": SCHEMA, "site": site_id, "site_name": site_name, "alarm_id": f"{site_id}/{a.id}",
            "revision": a.revision, "id": a.id, "rule": a.rule, "kind": a.kind, "source": a.source,
            "severity": a.severity, "state": a.state, "event": change.what, "message": a.message,
            "message_en": a.message_en, "raised_at": a.raised_at.isoformat(), "updated_at": a.updated_at.isoformat(),
            "acked_by": a.acked_by, "ack_note": a.ack_note, "value": a.value}


def alert_topic(prefix: str, rule: str, source: str) -> str:
    """`<prefix>/<rule>/<source>`, the source made a single topic level."""
    return f"{prefix}/{rule}/{source.replace('/', '_').replace('+', '_').replace('#', '_')}"


def alert_messages(change: AlertChange, prefix: str, site_id: str = "", site_name: str = "") \
        -> list[tuple[str, str | bytes, bool]]:
    """The MQTT messages of one alert change: (topic, payload, retain). An open alert's message
    is retained, so a console that connects later sees it; a cleared one is said once and its
    retained message deleted (an empty retained payload)."""
    a = change.alert
    topic = alert_topic(prefix, a.rule, a.source)
    body = json.dumps(alert_body(change, site_id, site_name), ensure_ascii=False)
    if a.state == "cleared":
        return [(topic, body, False), (topic, b"", True)]
    return [(topic, body, True)]
