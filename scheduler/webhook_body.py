"""What a webhook receives: the JSON body of one event, its headers, and the signature that proves it came from us.

The body is rendered once per event, the same bytes at every attempt, and signed as those exact bytes:

    {"id": 42, "at": "2026-12-02T01:02:03.456789+00:00", "kind": "File", "name": "motd", "uid": "…",
     "generation": 3, "type": "DriftCorrected", "reason": "Drift", "message": "content differed",
     "details": {…}, "text": "File/motd DriftCorrected (Drift): content differed"}

`text` makes it a Slack (or Mattermost, or Teams workflow) incoming-webhook message as it is; other receivers
read the other fields. Headers: `X-Setpoint-Event-Id` (the event's id: the same at a re-send, so a receiver
dedupes on it), `X-Setpoint-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with the secret's value>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

EVENT_ID = "X-Setpoint-Event-Id"
SIGNATURE = "X-Setpoint-Signature"
WEBHOOK = "X-Setpoint-Webhook"
USER_AGENT = "Setpoint-Webhook/1"
FIELDS = ("id", "at", "kind", "name", "uid", "generation", "type", "reason", "message", "details")


def text_of(event: Mapping[str, Any]) -> str:
    """One line a person reads in a chat channel, escaped as Slack's message format asks (&, <, >)."""
    line = f"{event['kind']}/{event['name']} {event['type']}"
    if event.get("reason"):
        line += f" ({event['reason']})"
    if event.get("message"):
        line += f": {event['message']}"
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(event: Mapping[str, Any]) -> bytes:
    """The body of `event` (a row of `events`): compact JSON, UTF-8."""
    body: dict[str, Any] = {field: event.get(field) for field in FIELDS}
    body["at"] = event["at"].isoformat() if hasattr(event["at"], "isoformat") else event["at"]
    body["uid"] = str(event["uid"]) if event.get("uid") is not None else None
    body["details"] = event.get("details") or {}
    body["text"] = text_of(event)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def sign(body: bytes, secret: str) -> str:
    """The X-Setpoint-Signature header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(event_id: int, webhook: str, body: bytes, secret: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_ID: str(event_id),
        WEBHOOK: webhook,
        SIGNATURE: sign(body, secret),
    }
