"""One step of one webhook's deliveries: its next matching event sent once, recorded before and after.

Exactly once by design, through the `deliveries` row of (webhook, event): an attempt is recorded (pending,
attempts + 1) and committed before it is sent; a 2xx marks it delivered in the statement that moves the
webhook's cursor past it, so a delivered event is never sent again. A dispatcher killed between the two sends
the unacknowledged event again after its restart, with the same X-Setpoint-Event-Id, on which receivers dedupe.
A failure is retried with exponential backoff and jitter (or after the receiver's Retry-After, bounded) for
webhook_retry_seconds, then recorded failed, and the webhook moves on; an answer that says retrying is useless
(a 4xx but 408, 425 and 429) is recorded failed at once. Each POST has one overall deadline
(scheduler/webhook_client.py), and any error in it is a failed attempt. The secret's value is read at each send,
through setpoint_webhook_secret(), and never logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx2
from sqlalchemy import Connection, Engine, text

from models.webhook import MAX_ERROR_CHARS
from scheduler import metrics, webhook_body, webhook_client
from setpoint.settings import Settings

log = logging.getLogger("setpoint.webhooks")

MAX_ANSWER_BYTES = 65_536
"""What is read of a receiver's answer after its status, within the POST's deadline, so the connection can be
kept (then it is dropped): a webhook needs only the status."""
MAX_RETRY_AFTER_S = 600.0
"""The longest a receiver's Retry-After makes a delivery wait."""
RETRIED_4XX = frozenset({408, 425, 429})
"""Client errors worth trying again (timeout, too early, too many requests); any other 4xx fails at once."""


@dataclasses.dataclass(frozen=True)
class Answer:
    """What came of one POST."""

    status: int | None = None
    """The HTTP status (None: no answer)."""
    error: str | None = None
    """Why it failed (None: a 2xx)."""
    retry_after_s: float | None = None
    """The receiver's Retry-After (on a 429 or 503), bounded by MAX_RETRY_AFTER_S."""

    @property
    def permanent(self) -> bool:
        """Retrying is useless: a 4xx but 408, 425 and 429."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in RETRIED_4XX


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """A Retry-After header's wait (seconds or an HTTP date), bounded by MAX_RETRY_AFTER_S; None if unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:
        return None
    return min(max((at - now).total_seconds(), 0.0), MAX_RETRY_AFTER_S)


_STEP = text("""
WITH next AS (
    SELECT newest.id AS newest, w.name AS webhook, w.url, w.secret, w.format,
           setpoint_webhook_secret(w.name) AS secret_value, e.*, d.state, d.next_attempt_at
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
        deadlines: webhook_client.Deadlines,
    ) -> None:
        self.settings = settings
        self.engine = engine
        """Autocommit: each statement is its own transaction."""
        self.client = client
        """Made by webhook_client.client with `deadlines`, so each POST ends by its deadline."""
        self.deadlines = deadlines
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
        answer = self._post(row, secret)
        if answer.error is not None and self.deadlines.stopping.is_set():
            return None  # cut short by stop: not the receiver's failure; pending, the next leader sends it
        return self._record(webhook, event_id, row["attempt"], row["attempt_first"], answer, row["url"])

    def _post(self, row: Any, secret: str) -> Answer:
        """POST the event of `row` within webhook_timeout_seconds, whatever the receiver does; any error is a
        failed attempt (never raised: a URL the client refuses must not jam the webhook)."""
        timeout_s = self.settings.webhook_timeout_seconds
        try:
            body = webhook_body.render(dict(row), row["format"])
            headers = webhook_body.headers(row["id"], row["webhook"], body, secret, int(self.now().timestamp()))
            with (
                self.deadlines.deadline(timeout_s),
                self.client.stream("POST", row["url"], content=body, headers=headers, timeout=timeout_s) as answer,
            ):
                status = answer.status_code
                with contextlib.suppress(Exception):  # the status is the answer; the rest only keeps the connection
                    read = 0
                    for chunk in answer.iter_raw():
                        read += len(chunk)
                        if read > MAX_ANSWER_BYTES:
                            break
                if 200 <= status < 300:
                    return Answer(status)
                wait_s = retry_after_s(answer.headers.get("Retry-After"), self.now()) if status in (429, 503) else None
                return Answer(status, f"HTTP {status} {answer.reason_phrase}".strip(), wait_s)
        except httpx2.TimeoutException as error:
            return Answer(None, f"no answer within {timeout_s:g}s ({type(error).__name__})")
        except Exception as error:  # noqa: BLE001  # InvalidURL, a TLS error, anything: recorded, not raised
            return Answer(None, f"{type(error).__name__}: {error}")

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
        answer: Answer,
        url: str,
    ) -> float | None:
        now = self.now()
        error = answer.error
        values: dict[str, Any] = {
            "webhook": webhook,
            "event_id": event_id,
            "status": answer.status,
            "delivered_at": None,
        }
        if error is None:
            with self.engine.connect() as conn:
                conn.execute(_DONE, {**values, "state": "delivered", "error": None, "delivered_at": now})
            metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
            return None
        error = scrub(error, url)[:MAX_ERROR_CHARS]
        fields = {"webhook": webhook, "event_id": event_id, "attempts": attempts, "error": error}
        if answer.permanent or now - first_attempt_at >= timedelta(seconds=self.settings.webhook_retry_seconds):
            with self.engine.connect() as conn:
                conn.execute(_DONE, {**values, "state": "failed", "error": error})
            metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
            log.warning("webhook delivery failed; given up, the webhook moves on", extra=fields)
            return None
        delay_s = self.backoff_s(attempts)
        if answer.retry_after_s is not None:
            delay_s = max(delay_s, answer.retry_after_s)
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


def scrub(error: str, url: str) -> str:
    """`error` without the URL or any piece of it past the host (a Slack URL's path is a token)."""
    error = error.replace(url, "<url>")
    _, _, rest = url.partition("://")
    host, sep, tail = rest.partition("/")
    for piece in sorted({host, sep + tail, *tail.split("/")}, key=len, reverse=True):
        if len(piece) >= 4:
            error = error.replace(piece, "<url>")
    return error
