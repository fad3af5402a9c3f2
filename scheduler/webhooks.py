"""The webhook dispatcher: the active scheduler POSTs each published event to every webhook it matches, once.

Woken by the events' NOTIFY (and every webhook_recheck_seconds, since NOTIFY replays nothing missed), it
publishes the inbox (setpoint_publish_events()) and hands every webhook behind the newest event to a bounded
pool of threads, one delivery in flight per webhook: a webhook's events go in id order, so in event order per
resource, and a slow or dead receiver holds one thread, never another webhook's events.

Exactly once by design, through the `deliveries` row of (webhook, event): an attempt is recorded (pending,
attempts + 1) and committed before it is sent; a 2xx marks it delivered in the transaction that moves the
webhook's cursor past it, so a delivered event is never sent again. A dispatcher killed between the two sends
the unacknowledged event again after its restart, with the same X-Setpoint-Event-Id, on which receivers dedupe.
A failure is retried with exponential backoff and jitter for webhook_retry_seconds, then recorded failed, and the
webhook moves on. The secret's value is read at each send, through setpoint_webhook_secret(), and never logged.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import psycopg
from sqlalchemy import Connection, text

from models.database import CONNECT_ARGS, libpq_url, make_engine
from models.event import CHANNEL
from models.webhook import MAX_ERROR_CHARS
from scheduler import metrics, webhook_body
from setpoint.settings import Settings

log = logging.getLogger("setpoint.webhooks")
logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per POST, with its URL, is noise

BATCH_S = 1.0
"""How long one thread keeps delivering a webhook's backlog before it lets the others have a turn."""
MAX_ANSWER_BYTES = 65_536
"""What is read of a receiver's answer (then the connection is dropped): a webhook needs only its status."""

_PUBLISH = text("SELECT setpoint_publish_events()")
_NEWEST = text("SELECT COALESCE(max(id), 0) FROM events")
"""Apart: a statement does not see the rows the function it calls has just published."""
_HOOKS = text("SELECT name, paused, last_event_id FROM webhooks")
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


class Dispatcher:
    """Started by the active scheduler (`start`), stopped when it stops leading (`stop`)."""

    def __init__(
        self,
        settings: Settings,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.now = now
        self.rng = rng or random.Random()
        threads = settings.webhook_concurrency
        # No ping per checkout (two per delivery): a connection lost with the server fails one step, tried again.
        self.engine = make_engine(
            settings.database_url,
            pool_size=threads + 1,
            max_overflow=1,
            pool_pre_ping=False,
            isolation_level="AUTOCOMMIT",  # every statement is one transaction: one round trip, one commit
        )
        self.client = httpx2.Client(
            follow_redirects=False,  # a receiver that moved is the webhook row's to change
            limits=httpx2.Limits(max_connections=threads, max_keepalive_connections=threads, keepalive_expiry=30),
        )
        self.stopping = threading.Event()
        self._poke = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._not_before: dict[str, float] = {}
        """Monotonic time before which a webhook waits (its last attempt failed, or its secret is missing)."""
        self._missing: set[str] = set()
        self._gauged: set[str] = set()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._listen, "webhook-listen"), (self._run, "webhook-dispatch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("webhook dispatcher started")

    def stop(self) -> None:
        """Stop sending: a POST in flight ends within webhook_timeout_seconds (its event is sent again later)."""
        self.stopping.set()
        self._poke.set()
        for thread in self._threads:
            thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
        self.engine.dispose()
        metrics.WEBHOOK_PENDING.clear()  # a standby reports none: sums over schedulers count each once
        log.info("webhook dispatcher stopped")

    def _listen(self) -> None:
        """Poke the dispatcher at each NOTIFY, and once after every (re)connect: NOTIFY replays nothing missed."""
        while not self.stopping.is_set():
            try:
                with psycopg.connect(libpq_url(self.settings.database_url), autocommit=True, **CONNECT_ARGS) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._poke.set()
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._poke.set()
            except psycopg.Error as error:
                log.warning("webhook listen connection lost", extra={"error": str(error).strip()})
                self.stopping.wait(self.settings.leader_retry_seconds)

    def _run(self) -> None:
        wait_s = 0.0
        while not self.stopping.is_set():
            self._poke.wait(wait_s)
            self._poke.clear()
            if self.stopping.is_set():
                return
            try:
                wait_s = self._round()
            except Exception:
                log.exception("webhook dispatch round failed; it runs again")
                wait_s = self.settings.leader_retry_seconds

    def _round(self) -> float:
        """Publish the inbox, then give every webhook with something to send to a thread; returns how long to
        wait for a notification before looking again."""
        with self.engine.connect() as conn:
            conn.execute(_PUBLISH)
            newest = conn.execute(_NEWEST).scalar_one()
            hooks = conn.execute(_HOOKS).mappings().all()
        names = {hook["name"] for hook in hooks}
        for gone in self._gauged - names:  # removed webhooks: no gauge, no backoff left behind
            metrics.WEBHOOK_PENDING.remove(gone)
            with self._lock:
                self._not_before.pop(gone, None)
        self._gauged = names
        wait_s = self.settings.webhook_recheck_seconds
        at = time.monotonic()
        for hook in hooks:
            metrics.WEBHOOK_PENDING.labels(hook["name"]).set(max(0, newest - hook["last_event_id"]))
            if hook["paused"] or hook["last_event_id"] >= newest:
                continue
            with self._lock:
                if hook["name"] in self._busy:
                    continue
                later_s = self._not_before.get(hook["name"], 0.0) - at
                if later_s > 0:
                    wait_s = min(wait_s, later_s)
                    continue
                self._busy.add(hook["name"])
            future = self._pool.submit(self._serve, hook["name"])
            future.add_done_callback(functools.partial(self._served, hook["name"]))
        return wait_s

    def _served(self, webhook: str, done: Future[float]) -> None:
        broke = None if done.cancelled() else done.exception()
        delay_s = 0.0 if done.cancelled() or broke else done.result()
        if broke:
            log.error("webhook delivery broke; tried again", exc_info=broke, extra={"webhook": webhook})
            delay_s = self.settings.webhook_backoff_base_seconds
        with self._lock:
            self._busy.discard(webhook)
            self._not_before[webhook] = time.monotonic() + delay_s
        self._poke.set()

    def _serve(self, webhook: str) -> float:
        """Deliver the webhook's events in order for up to BATCH_S; returns how long it must wait (0: not at all)."""
        until = time.monotonic() + BATCH_S
        while not self.stopping.is_set() and time.monotonic() < until:
            wait_s = self._step(webhook)
            if wait_s is not None:
                return wait_s
        return 0.0

    def _step(self, webhook: str) -> float | None:
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
