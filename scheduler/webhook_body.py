"""What a webhook receives: the JSON body of one event, its headers, and the signature that proves it came from us.

The body is rendered the same bytes at every attempt; its shape is the webhook's `format`:

    generic: {"id": 42, "at": "2026-12-02T01:02:03.456789+00:00", "kind": "File", "name": "motd", "uid": "…",
              "generation": 3, "type": "DriftCorrected", "reason": "Applied", "message": "drift corrected: …",
              "details": {…}, "text": "File/motd DriftCorrected (Applied): drift corrected: …"}
    chat:    {"text": "File/motd DriftCorrected (Applied): drift corrected: …"}

`chat` is what Slack's and Mattermost's incoming webhooks accept (Mattermost refuses a `type` that does not start
with `custom_`). Headers: `X-Setpoint-Event-Id` (the event's id: the same at a re-send, so a receiver dedupes on
it), `X-Setpoint-Timestamp` (unix seconds of this attempt) and `X-Setpoint-Signature: sha256=<hex HMAC-SHA256
of timestamp + "." + body, keyed with the secret's value>` (Stripe's scheme: a receiver refuses an old
timestamp, so a captured request cannot be replayed later).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

EVENT_ID = "X-Setpoint-Event-Id"
SIGNATURE = "X-Setpoint-Signature"
TIMESTAMP = "X-Setpoint-Timestamp"
WEBHOOK = "X-Setpoint-Webhook"
USER_AGENT = "Setpoint-Webhook/1"
FIELDS = ("id", "at", "kind", "name", "uid", "generation", "type", "reason", "message", "details")
FORMATS = ("generic", "chat")
"""generic: every field and `text`; chat: `text` alone (a Slack or Mattermost incoming-webhook message)."""


def text_of(event: Mapping[str, Any]) -> str:
    """One line a person reads in a chat channel, escaped as Slack's message format asks (&, <, >)."""
    line = f"{event['kind']}/{event['name']} {event['type']}"
    if event.get("reason"):
        line += f" ({event['reason']})"
    if event.get("message"):
        line += f": {event['message']}"
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(event: Mapping[str, Any], format: str = "generic") -> bytes:  # noqa: A002  # the column's name
    """The body of `event` (a row of `events`) in `format`: compact JSON, UTF-8."""
    if format == "chat":
        return json.dumps({"text": text_of(event)}, separators=(",", ":"), ensure_ascii=False).encode()
    body: dict[str, Any] = {field: event.get(field) for field in FIELDS}
    body["at"] = event["at"].isoformat() if hasattr(event["at"], "isoformat") else event["at"]
    body["uid"] = str(event["uid"]) if event.get("uid") is not None else None
    body["details"] = event.get("details") or {}
    body["text"] = text_of(event)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The X-Setpoint-Signature header's value for `body` sent at `timestamp` (unix seconds)."""
    signed = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def headers(event_id: int, webhook: str, body: bytes, secret: str, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_ID: str(event_id),
        WEBHOOK: webhook,
        TIMESTAMP: str(timestamp),
        SIGNATURE: sign(body, secret, timestamp),
    }
