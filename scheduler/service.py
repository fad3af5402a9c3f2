"""The scheduler process: elect a leader, then tick (claim due, enqueue), listen for changes, keep house.

APScheduler is the clock: an interval job claims due resources every tick, a NOTIFY reschedules that
job to run at once, a slower job prunes run history, and another marks resources of silent nodes lost.
Only the leader runs them; a standby waits.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from celery import Celery
from sqlalchemy import Engine

from models.database import make_engine
from scheduler import claim, metrics, nodes, retention, webhooks
from scheduler.leader import Leadership
from scheduler.wake import Listener
from setpoint.settings import Settings
from worker.celery_app import TASK, queue_for

log = logging.getLogger("setpoint.scheduler")


class Scheduler:
    def __init__(self, settings: Settings, app: Celery, engine: Engine | None = None) -> None:
        self.settings = settings
        self.app = app
        self.engine = engine or make_engine(settings.database_url, pool_size=2, max_overflow=1)
        self.stop = threading.Event()
        self.leading = False
        """True while this is the active scheduler (its metrics then report the fleet's state)."""
        self._woken = threading.Event()
        self._changes_pruned_after = 0
        """The newest change at the last prune: only resources changed since can have more than they keep."""
        self._capped = threading.Event()
        """The last claim left due resources waiting for a slot of a policy's max_in_flight."""
        self._tick: Job | None = None

    def wake(self, tick: Job) -> None:
        """Claim now: a desired row changed. A wake during a running tick makes that tick go round again."""
        self._woken.set()
        tick.modify(next_run_time=datetime.now(UTC))

    def enqueue_due(self) -> int:
        """Claim and send every due resource, batch by batch; returns how many were sent."""
        sent = 0
        self._woken.clear()
        while True:
            started_s = time.monotonic()
            claims = claim.claim_due(
                self.engine,
                batch=self.settings.claim_batch_size,
                default_interval_seconds=self.settings.default_interval_seconds,
                retry_window_s=self.settings.quick_retry_max_seconds + 5,
                running_limit_s=self.settings.running_limit_seconds,
                node_silent_s=self.settings.node_silent_seconds,
                on_capped=self._capped.set,
            )
            self._send(claims)
            for c in claims:
                metrics.ENQUEUE_LAG.observe(c.lateness_s)
            sent += len(claims)
            if claims:
                log.info(
                    "enqueued",
                    extra={"count": len(claims), "max_lateness_s": max(c.lateness_s for c in claims)},
                )
            if len(claims) < self.settings.claim_batch_size and not self._woken.is_set():
                if self._capped.is_set() and self._tick is not None:  # a slot frees when any reconcile finishes
                    self._capped.clear()
                    soon_s = claim.again_in_s(time.monotonic() - started_s)
                    self._tick.modify(next_run_time=datetime.now(UTC) + timedelta(seconds=soon_s))
                return sent
            self._woken.clear()

    def _send(self, claims: list[claim.Claim]) -> None:
        """Send one message per claim, all in one Redis pipeline (kombu's publish batch: a round trip per batch
        instead of two per message, the task and Flower's task-sent event).

        If the broker fails, every claim of the batch is released and the next tick claims them again (the
        pipeline is not retried). A message that got through before the failure carries the older claim: the
        worker drops it as superseded, or, if it was already running it, the newer one reconciles once more."""
        if not claims:
            return
        try:
            # Two commands per message (the task, its event): the whole batch in one flush.
            with self.app.producer_or_acquire() as producer, producer.batch(max_size=2 * len(claims)):
                for c in claims:
                    self.app.send_task(
                        TASK,
                        args=[c.kind, c.name],
                        kwargs={"claim": c.claim},
                        queue=queue_for(c.node, self.settings),
                        producer=producer,
                    )
        except Exception:
            claim.release(self.engine, claims)
            raise

    def keep_house(self) -> None:
        pruned = retention.prune(self.engine, keep=self.settings.history_noops_kept, days=self.settings.history_days)
        log.info("pruned run history", extra={"deleted": pruned})
        pruned, self._changes_pruned_after = retention.prune_changes(
            self.engine,
            keep=self.settings.history_changes_kept,
            days=self.settings.history_days,
            after=self._changes_pruned_after,
        )
        log.info("pruned desired-state history", extra={"deleted": pruned})
        events = retention.prune_events(self.engine, kept=self.settings.events_kept, days=self.settings.events_days)
        log.info("pruned events", extra={"deleted": events})

    def watch_nodes(self) -> None:
        lost = nodes.mark_lost(self.engine, silent_s=self.settings.node_silent_seconds)
        if lost:
            log.warning("resources on silent nodes marked NodeLost", extra={"count": lost})

    def _lead(self, leadership: Leadership) -> None:
        """Serve as the active scheduler until stopped or until leadership is lost."""
        clock = BackgroundScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        tick = clock.add_job(
            self._safely(self.enqueue_due),
            "interval",
            seconds=self.settings.tick_seconds,
            id="tick",
            next_run_time=datetime.now(UTC),
        )
        self._tick = tick
        clock.add_job(
            self._safely(self.keep_house),
            "interval",
            seconds=self.settings.housekeeping_seconds,
            id="housekeeping",
            next_run_time=datetime.now(UTC),
        )
        clock.add_job(
            self._safely(self.watch_nodes),
            "interval",
            seconds=self.settings.node_heartbeat_seconds,
            id="nodes",
            next_run_time=datetime.now(UTC),
        )
        clock.start()
        dispatcher = webhooks.Dispatcher(self.settings)  # events to webhooks: the active scheduler's alone
        dispatcher.start()
        listener = Listener(self.settings.database_url)
        self.leading = True
        try:
            while not self.stop.is_set():
                try:
                    listener.wait(1.0, lambda: self.wake(tick))
                except Exception:
                    self.stop.wait(self.settings.leader_retry_seconds)
                if not leadership.held():
                    log.warning("lost leadership")
                    return
        finally:
            self.leading = False
            clock.shutdown(wait=True)  # first: a scheduler that lost leadership claims nothing beside the new leader
            dispatcher.stop()
            listener.close()

    @staticmethod
    def _safely(job):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                job()
            except Exception:
                log.exception("scheduler job failed; it runs again next time", extra={"job": job.__name__})

        run.__name__ = job.__name__
        return run

    def run(self) -> None:
        """Run until `stop` is set: standby while another scheduler leads, active otherwise."""
        while not self.stop.is_set():
            leadership = Leadership(self.settings.database_url)
            log.info("waiting to lead")
            if not leadership.acquire(self.stop, self.settings.leader_retry_seconds):
                break
            log.info("leading")
            try:
                self._lead(leadership)
            finally:
                leadership.release()
