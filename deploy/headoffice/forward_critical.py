#!/usr/bin/env python3
"""Head office: forward every estate's new critical alarms from the central broker to a WeCom
(企业微信) group robot, each once.

Not a server of ours, a recipe: about 100 lines on aiomqtt and aiohttp (both come with the
gateway). It subscribes to `+/alerts/#` with a persistent session, so alarms raised while it
was stopped are delivered when it starts again, and keeps the highest revision it has seen per
(site, alarm_id) in a JSON file, so a bridge's repeated retained message, a stale copy after the
clear, or a restart of this script sends nothing twice (the alarm message contract: README,
"Alarm messages are a contract").

    CENTRAL_HOST=ho.example.com CENTRAL_PORT=8883 CERTS=/etc/headoffice/certs \
    WECOM_URL='https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...' \
    python3 forward_critical.py --state /var/lib/headoffice/forwarded.json

TLS: CERTS holds headoffice-ca.pem, headoffice-consumer.pem and .key (a consumer's certificate;
the central ACL lets it read everything). Without CERTS it connects in plain TCP (tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
from pathlib import Path

import aiohttp
import aiomqtt


def text(m: dict) -> str:
    return (f"【{m['site_name']}】严重告警\n{m['message']}\n时间 {m['raised_at'][:16].replace('T', ' ')}\n"
            f"编号 {m['alarm_id']}")


def is_new(seen: dict, m: dict) -> bool:
    """The newest revision of this alarm so far? (and remember it)"""
    key = f"{m['site']}|{m['alarm_id']}"
    if m["revision"] <= seen.get(key, 0):
        return False
    seen[key] = m["revision"]
    return True


async def post(http: aiohttp.ClientSession, url: str, body: dict) -> None:
    """Until WeCom takes it: the broker has already handed the message over, so it is retried here."""
    delay = 1.0
    while True:
        try:
            async with http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=10)) as r:
                if r.status == 200:
                    return
                print(f"WeCom answered {r.status}; retrying", flush=True)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            print(f"WeCom unreachable ({e}); retrying", flush=True)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 60.0)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--state", type=Path, default=Path("forwarded.json"))
    ap.add_argument("--client-id", default="headoffice-critical-forwarder")
    args = ap.parse_args()
    seen = json.loads(args.state.read_text()) if args.state.exists() else {}
    tls = None
    if certs := os.environ.get("CERTS"):
        tls = ssl.create_default_context(cafile=f"{certs}/headoffice-ca.pem")
        tls.load_cert_chain(f"{certs}/headoffice-consumer.pem", f"{certs}/headoffice-consumer.key")
    url = os.environ["WECOM_URL"]
    async with aiohttp.ClientSession() as http, aiomqtt.Client(
            os.environ.get("CENTRAL_HOST", "127.0.0.1"), int(os.environ.get("CENTRAL_PORT", "1883")),
            identifier=args.client_id, clean_session=False, tls_context=tls) as mqtt:
        await mqtt.subscribe("+/alerts/#", qos=1)
        print("forwarding", flush=True)
        async for msg in mqtt.messages:
            if not msg.payload:
                continue                            # a cleared alarm's retained message deleted
            try:
                m = json.loads(msg.payload)
                fresh = is_new(seen, m)
            except (ValueError, KeyError, TypeError):
                continue
            if fresh and m["severity"] == "critical" and m["event"] == "raised":
                await post(http, url, {"msgtype": "text", "text": {"content": text(m)}})
            if fresh:
                args.state.write_text(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main())
