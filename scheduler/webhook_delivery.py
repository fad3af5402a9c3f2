"""One step of one webhook's deliveries: its next matching event sent once, recorded before and after.

Exactly once by design, through the `deliveries` row of (webhook, event): an attempt is recorded (pending,
attempts + 1) and committed before it is sent; a 2xx marks it delivered in the statement that moves the
webhook's cursor past it, so a delivered event is never sent again. A dispatcher killed between the two sends
the unacknowledged event again after its restart, with the same X-Setpoint-Event-Id, on which receivers dedupe.
A failure is retried with exponential backoff and jitter for webhook_retry_seconds, then recorded failed, and the
webhook moves on. The secret's value is read at each send, through setpoint_webhook_secret(), and never logged.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx2
from sqlalchemy import Connection, Engine, text

from models.webhook import MAX_ERROR_CHARS
from scheduler import metrics, webhook_body
from setpoint.settings import Settings

log = logging.getLogger("setpoint.webhooks")

MAX_ANSWER_BYTES = 65_536
"""What is read of a receiver's answer (then the connection is dropped): a webhook needs only its status."""

_STEP = text("""
WITH next AS (
    SELECT newest.id AS newest, w.name AS webhook, w.url, w.secret, setpoint_webhook_secret(w.name) AS secret_value,
           e.*, d.state, d.next_attempt_at
    FROM webhooks AS w
    CROSS JOIN (SELECT COALESCE(max(id), 0) AS id FROM events) AS newest
    LEFT JOIN LATERAL (
        SELECT * FROM events AS e
        WHERE e.id > w.last_event_id AND e.id <= newest.id
          AND (w.kinds IS NULL OR e.kind = ANY(w.kinds)) AND (w.types IS NULL OR e.type = ANY(w.types))
        ORDER BY e.id LIMIT 1
    ) AS e ON true
    LEFT JOIN deliveries AS d ON d.webhook = w.name AND d.event_id = e.id
    WHERE w.name = :webhook AND NOT w.paused
), attempt AS (
    INSERT INTO deliveries AS d (webhook, event_id, state, attempts, first_attempt_at, last_attempt_at)
    SELECT next.webhook, next.id, 'pending', 1, :now, :now FROM next
    WHERE next.id IS NOT NULL AND next.secret_value IS NOT NULL AND COALESCE(next.state, 'pending') = 'pending'
      AND (next.next_attempt_at IS NULL OR next.next_attempt_at <= :now)
    ON CONFLICT (webhook, event_id) DO UPDATE SET attempts = d.attempts + 1, last_attempt_at = EXCLUDED.last_attempt_at,
        first_attempt_at = COALESCE(d.first_attempt_at, EXCLUDED.first_attempt_at), next_attempt_at = NULL
    WHERE d.state = 'pending'
    RETURNING d.attempts AS attempt, d.first_attempt_at AS attempt_first
)
SELECT next.*, attempt.attempt, attempt.attempt_first FROM next LEFT JOIN attempt ON true
""")
"""One statement, so one snapshot and one commit: the webhook's next matching event and the newest event, and,
if it is to be sent now, its attempt recorded. With none matching, the webhook has seen up to that newest event
(not up to one published a moment later, which this statement did not look at)."""
_ADVANCE = text("UPDATE webhooks SET last_event_id = :event_id WHERE name = :webhook AND last_event_id < :event_id")
_WAITING = text("""
INSERT INTO deliveries AS d (webhook, event_id, state, next_attempt_at, last_error)
VALUES (:webhook, :event_id, 'pending', :next, :error)
ON CONFLICT (webhook, event_id) DO UPDATE SET next_attempt_at = :next, last_error = :error
""")
_RESULT = text("""
UPDATE deliveries SET state = :state, last_status = :status, last_error = :error, next_attempt_at = :next,
    delivered_at = :delivered_at
WHERE webhook = :webhook AND event_id = :event_id
""")
_DONE = text("""
WITH done AS (
    UPDATE deliveries SET state = :state, last_status = :status, last_error = :error, next_attempt_at = NULL,
        delivered_at = :delivered_at
    WHERE webhook = :webhook AND event_id = :event_id
)
UPDATE webhooks SET last_event_id = :event_id WHERE name = :webhook AND last_event_id < :event_id
""")
"""Delivered or given up: recorded, and the cursor moved past it, at once (one statement, one transaction)."""


class Courier:
    """Delivers for the dispatcher, one webhook's step at a time (never two steps of one webhook at once)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        client: httpx2.Client,
        now: Callable[[], datetime],
        rng: random.Random,
    ) -> None:
        self.settings = settings
        self.engine = engine
        """Autocommit: each statement is its own transaction."""
        self.client = client
        self.now = now
        self.rng = rng
        self._missing: set[str] = set()
        """Webhooks whose secret was missing at their last step (logged once until it is found)."""

    def step(self, webhook: str) -> float | None:
        """Deliver (or try to) the webhook's next matching event: None when done with it, else how long to wait."""
        now = self.now()
        with self.engine.connect() as conn:  # autocommit: each statement its own transaction
            row = conn.execute(_STEP, {"webhook": webhook, "now": now}).mappings().first()
            if row is None:  # paused or gone
                return 0.0
            if row["id"] is None:  # no matching event left: it has seen up to the newest
                conn.execute(_ADVANCE, {"webhook": webhook, "event_id": row["newest"]})
                return 0.0
            event_id = row["id"]
            if row["state"] in ("delivered", "failed"):  # done with already (a cursor moved back by hand)
                conn.execute(_ADVANCE, {"webhook": webhook, "event_id": event_id})
                return None
            if row["attempt"] is None:  # not sent now: it waits for its time, or its secret, or was sent meanwhile
                if row["next_attempt_at"] is not None and row["next_attempt_at"] > now:
                    return (row["next_attempt_at"] - now).total_seconds()
                if row["secret_value"] is None:
                    return self._wait_for_secret(conn, webhook, row["secret"], event_id, now)
                return None  # done with by a scheduler that led a moment ago
        secret = row["secret_value"]
        if webhook in self._missing:
            self._missing.discard(webhook)
            log.info("webhook secret found; delivering again", extra={"webhook": webhook})
        body = webhook_body.render(dict(row))
        status, error = self._post(row["url"], body, webhook_body.headers(event_id, webhook, body, secret))
        return self._record(webhook, event_id, row["attempt"], row["attempt_first"], status, error, row["url"])

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        """POST; returns the answer's status (None: no answer) and an error (None: a 2xx)."""
        try:
            with self.client.stream(
                "POST", url, content=body, headers=headers, timeout=self.settings.webhook_timeout_seconds
            ) as answer:
                read = 0
                for chunk in answer.iter_raw():
                    read += len(chunk)
                    if read > MAX_ANSWER_BYTES:
                        break
                if 200 <= answer.status_code < 300:
                    return answer.status_code, None
                return answer.status_code, f"HTTP {answer.status_code} {answer.reason_phrase}".strip()
        except httpx2.TimeoutException as error:
            return None, f"no answer within {self.settings.webhook_timeout_seconds:g}s ({type(error).__name__})"
        except httpx2.HTTPError as error:
            return None, f"{type(error).__name__}: {error}"

    def _wait_for_secret(self, conn: Connection, webhook: str, secret: str, event_id: int, now: datetime) -> float:
        delay_s = min(self.settings.webhook_recheck_seconds, self.settings.webhook_backoff_max_seconds)
        error = (
            f"secret {secret!r} does not exist: nothing sent; create it (setpoint secret set {secret}) and "
            "this webhook's deliveries resume"
        )
        next_at = now + timedelta(seconds=delay_s)
        conn.execute(_WAITING, {"webhook": webhook, "event_id": event_id, "next": next_at, "error": error})
        metrics.WEBHOOK_DELIVERIES.labels("waiting").inc()
        if webhook not in self._missing:
            self._missing.add(webhook)
            log.warning("webhook waits for its secret", extra={"webhook": webhook, "secret": secret})
        return delay_s

    def _record(
        self,
        webhook: str,
        event_id: int,
        attempts: int,
        first_attempt_at: datetime,
        status: int | None,
        error: str | None,
        url: str,
    ) -> float | None:
        now = self.now()
        values: dict[str, Any] = {"webhook": webhook, "event_id": event_id, "status": status, "delivered_at": None}
        if error is None:
            with self.engine.connect() as conn:
                conn.execute(_DONE, {**values, "state": "delivered", "error": None, "delivered_at": now})
            metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
            return None
        error = error.replace(url, "<url>")[:MAX_ERROR_CHARS]  # the URL may hold a token (Slack's do)
        fields = {"webhook": webhook, "event_id": event_id, "attempts": attempts, "error": error}
        if now - first_attempt_at >= timedelta(seconds=self.settings.webhook_retry_seconds):
            with self.engine.connect() as conn:
                conn.execute(_DONE, {**values, "state": "failed", "error": error})
            metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
            log.warning("webhook delivery failed; given up, the webhook moves on", extra=fields)
            return None
        delay_s = self.backoff_s(attempts)
        with self.engine.connect() as conn:
            next_at = now + timedelta(seconds=delay_s)
            conn.execute(_RESULT, {**values, "state": "pending", "error": error, "next": next_at})
        metrics.WEBHOOK_DELIVERIES.labels("retried").inc()
        log.warning("webhook delivery attempt failed; retried", extra={**fields, "retry_in_s": round(delay_s, 3)})
        return delay_s

    def backoff_s(self, attempts: int) -> float:
        """The delay after the `attempts`-th failed attempt: doubling from the base, capped, jittered by up to
        half (so receivers coming back are not hit by every webhook at once)."""
        doubled_s = self.settings.webhook_backoff_base_seconds * 2 ** min(attempts - 1, 30)
        delay_s = min(self.settings.webhook_backoff_max_seconds, doubled_s)
        return delay_s * (0.5 + self.rng.random() / 2)
