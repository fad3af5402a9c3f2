"""The webhook dispatcher: the active scheduler POSTs each published event to every webhook it matches, once.

Woken by the events' NOTIFY (and every webhook_recheck_seconds, since NOTIFY replays nothing missed), it
publishes the inbox (setpoint_publish_events()) and hands every webhook behind the newest event to a bounded
pool of threads, one delivery in flight per webhook: a webhook's events go in id order, so in event order per
resource, and a slow or dead receiver holds one thread, never another webhook's events.

Each step of a webhook (its next event sent once, recorded before and after) is scheduler/webhook_delivery.py's.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime

import psycopg
from sqlalchemy import text

from models.database import CONNECT_ARGS, libpq_url, make_engine
from models.event import CHANNEL
from scheduler import metrics, webhook_client, webhook_delivery
from setpoint.settings import Settings

log = logging.getLogger("setpoint.webhooks")
logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per POST, with its URL, is noise

STOP_S = 2.0
"""How long `stop` waits for its threads (a POST in flight is cut short at once) before it abandons them."""
BATCH_S = 1.0
"""How long one thread keeps delivering a webhook's backlog before it lets the others have a turn."""

_PUBLISH = text("SELECT setpoint_publish_events()")
_NEWEST = text("SELECT COALESCE(max(id), 0) FROM events")
"""Apart: a statement does not see the rows the function it calls has just published."""
_HOOKS = text("SELECT name, paused, last_event_id FROM webhooks")


class Dispatcher:
    """Started by the active scheduler (`start`), stopped when it stops leading (`stop`)."""

    def __init__(
        self,
        settings: Settings,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        threads = settings.webhook_concurrency
        # No ping per checkout (two per delivery): a connection lost with the server fails one step, tried again.
        self.engine = make_engine(
            settings.database_url,
            pool_size=threads + 1,
            max_overflow=1,
            pool_pre_ping=False,
            isolation_level="AUTOCOMMIT",  # every statement is one transaction: one round trip, one commit
        )
        self.deadlines = webhook_client.Deadlines()
        self.client = webhook_client.client(threads, self.deadlines)
        self.courier = webhook_delivery.Courier(
            settings, self.engine, self.client, now, rng or random.Random(), self.deadlines
        )
        self.stopping = self.deadlines.stopping
        """Set, every POST in flight ends within webhook_client.SLICE_S (its event is sent again later)."""
        self._poke = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._not_before: dict[str, float] = {}
        """Monotonic time before which a webhook waits (its last attempt failed, or its secret is missing)."""
        self._gauged: set[str] = set()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._listen, "webhook-listen"), (self._run, "webhook-dispatch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("webhook dispatcher started")

    def stop(self) -> None:
        """Stop sending, within about STOP_S: a POST in flight is cut short (its event is sent again later); a
        thread still busy after that (a database call hanging) is abandoned, and sends nothing more."""
        self.stopping.set()
        self._poke.set()
        until = time.monotonic() + STOP_S
        for thread in self._threads:
            thread.join(max(0.0, until - time.monotonic()))
        self._pool.shutdown(wait=False, cancel_futures=True)
        for worker in list(self._pool._threads):  # noqa: SLF001  # the pool's own join has no timeout
            worker.join(max(0.0, until - time.monotonic()))
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
            hooks = conn.execute(_HOOKS).mappings().all()
            # With nothing to deliver to, publishing is left to readers and housekeeping: the inbox then stays
            # non-empty, so writers send no NOTIFY at all (setpoint_events_waiting), which a mass rollout feels.
            if hooks:
                conn.execute(_PUBLISH)
            newest = conn.execute(_NEWEST).scalar_one() if hooks else 0
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
            wait_s = self.courier.step(webhook)
            if wait_s is not None:
                return wait_s
        return 0.0
