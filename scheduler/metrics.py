"""The scheduler's Prometheus metrics: how late it enqueues, and the fleet's state as the database and broker
hold it, read by the active scheduler rather than by every worker.

A thread reads the fleet's state every `metrics_refresh_seconds` (one grouped query over `statuses` and one
LLEN per queue, whatever the number of workers) and scrapes are answered from the last reading: however many
scrapers there are, they never take a database connection the scheduler needs. A reading that fails keeps
the last one, whose age `setpoint_metrics_age_seconds` shows. Standby schedulers report only that they stand
by, so sums over every scheduler count each resource once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

from scheduler import policy_usage
from setpoint.settings import Settings
from worker import metrics
from worker.celery_app import queue_for

log = logging.getLogger("setpoint.metrics")

ENQUEUE_LAG = Histogram(
    "setpoint_enqueue_lag_seconds",
    "How long after a resource fell due the scheduler claimed and enqueued its reconcile.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)

WEBHOOK_DELIVERIES = Counter(
    "setpoint_webhook_deliveries",
    "Webhook delivery attempts by result: delivered (2xx), retried (failed, tried again with backoff), failed (given "
    "up after webhook_retry_seconds), waiting (the webhook's secret is missing: nothing sent).",
    ["result"],
)
WEBHOOK_PENDING = Gauge(
    "setpoint_webhook_pending_events",
    "Events published since a webhook's cursor, by webhook: what it has yet to deliver (or skip, when its filters "
    "do not match). Alert when it keeps growing: its receiver is down, slow or paused.",
    ["webhook"],
)

LOCK_TIMEOUT_MS = 1000
QUERY_TIMEOUT_MS = 5000
"""A reading gives up on a locked table or a slow database rather than hold a connection the scheduler needs."""

LEADERSHIP_CHECK_S = 1.0
"""How soon a scheduler that starts leading reads the fleet's state, whatever the refresh interval."""

_STATE = text("""
SELECT kind, node,
       count(*) AS resources,
       count(*) FILTER (WHERE NOT ready) AS not_ready,
       count(*) FILTER (WHERE consecutive_failures > 0) AS failing,
       max(consecutive_failures) AS max_failures
FROM statuses GROUP BY kind, node
""")


@dataclass(frozen=True)
class Reading:
    """The fleet's state as one refresh read it: counts per kind, messages per queue, and when (monotonic)."""

    kinds: dict[str, dict[str, int]]
    depths: dict[str, int]
    at_s: float
    policies: tuple[policy_usage.Usage, ...] = ()


class FleetCollector(Collector):
    """Gauges of the last reading: resources by kind from `statuses`, and messages waiting in each queue."""

    def __init__(
        self,
        engine: Engine,
        broker: redis.Redis,
        settings: Settings,
        leading: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.broker = broker
        self.settings = settings
        self.leading = leading
        self.clock = clock
        self.refreshes = 0
        self._reading: Reading | None = None
        self._failing = False

    def describe(self) -> Iterable[Metric]:
        return self._families(None, False)

    def collect(self) -> Iterable[Metric]:
        """Never reads the database or the broker: a scrape costs the scheduler nothing but the answer."""
        leading = self.leading()
        return self._families(self._reading if leading else None, leading)

    def refresh(self) -> None:
        """Read the fleet's state now, or forget it while standing by. A failed reading keeps the last one and is
        logged once, until a reading succeeds again."""
        if not self.leading():
            self._reading = None
            return
        self.refreshes += 1
        try:
            rows, limits = self._read_statuses()
            nodes = {row["node"] for row in rows if row["node"]}
            queues = [self.settings.queue, *sorted(queue_for(node, self.settings) for node in nodes)]
            self._reading = Reading(_by_kind(rows), self._depths(queues), self.clock(), limits)
        except Exception as error:
            if not self._failing:
                log.warning(
                    "metrics could not read the fleet's state; serving the last reading",
                    extra={"error": str(error).splitlines()[0] if str(error) else type(error).__name__},
                )
            self._failing = True
            return
        if self._failing:
            log.info("metrics read the fleet's state again")
        self._failing = False

    def refresh_until(self, stop: threading.Event) -> None:
        """Refresh every settings.metrics_refresh_seconds, and at once when this scheduler starts or stops leading."""
        every_s = self.settings.metrics_refresh_seconds
        last_s: float | None = None
        was_leading = False
        while True:
            leading = self.leading()
            now_s = self.clock()
            if leading != was_leading or (leading and (last_s is None or now_s - last_s >= every_s)):
                self.refresh()
                last_s = now_s
            was_leading = leading
            if stop.wait(min(every_s, LEADERSHIP_CHECK_S)):
                return

    def _read_statuses(self) -> tuple[list[dict[str, Any]], tuple[policy_usage.Usage, ...]]:
        with self.engine.begin() as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"))
            conn.execute(text(f"SET LOCAL statement_timeout = {QUERY_TIMEOUT_MS}"))
            return [dict(row) for row in conn.execute(_STATE).mappings()], tuple(policy_usage.usage(conn))

    def _depths(self, queues: list[str]) -> dict[str, int]:
        with self.broker.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(queue)
            return dict(zip(queues, pipe.execute(), strict=True))

    def _families(self, reading: Reading | None, leading: bool) -> list[Metric]:
        leader = GaugeMetricFamily(
            "setpoint_scheduler_leader", "1 while this scheduler is the active one, 0 while it stands by."
        )
        leader.add_metric([], 1 if leading else 0)
        refreshes = CounterMetricFamily(
            "setpoint_metrics_refreshes",
            "Times this scheduler read the fleet's state for these metrics: every metrics_refresh_seconds while "
            "it leads, never per scrape.",
        )
        refreshes.add_metric([], self.refreshes)
        age = GaugeMetricFamily(
            "setpoint_metrics_age_seconds",
            "How old the fleet's state in these metrics is: alert when it passes a few refresh intervals (the "
            "database or broker cannot be read).",
        )
        gauges = {
            "resources": GaugeMetricFamily(
                "setpoint_resources", "Resources of each kind that have a status row.", labels=["kind"]
            ),
            "not_ready": GaugeMetricFamily(
                "setpoint_resources_not_ready",
                "Resources not ready: pending, failed, invalid, drifted, degraded or being deleted.",
                labels=["kind"],
            ),
            "failing": GaugeMetricFamily(
                "setpoint_resources_failing", "Resources whose last reconcile failed.", labels=["kind"]
            ),
            "max_failures": GaugeMetricFamily(
                "setpoint_consecutive_failures_max",
                "The most consecutive failed reconciles of any one resource of the kind: alert when it passes a few.",
                labels=["kind"],
            ),
        }
        queue = GaugeMetricFamily(
            "setpoint_queue_messages",
            "Queue depth: messages waiting in a Celery queue (Redis LLEN), not counting those workers hold.",
            labels=["queue"],
        )
        held = GaugeMetricFamily(
            "setpoint_policy_held_resources",
            "Resources a policy holds back now: `limit` due but waiting for max_in_flight or max_per_minute, "
            "`rollout` in phase Held (max_unready, or a rollout max_failures halted).",
            labels=["policy", "by"],
        )
        halted = GaugeMetricFamily(
            "setpoint_policy_halted", "1 while max_failures has halted the policy's rollout.", labels=["policy"]
        )
        if reading is not None:
            age.add_metric([], max(0.0, self.clock() - reading.at_s))
            for policy in reading.policies:
                held.add_metric([policy.name, "limit"], policy.waiting)
                held.add_metric([policy.name, "rollout"], policy.held)
                halted.add_metric([policy.name], 1 if policy.halted else 0)
            for kind, counts in sorted(reading.kinds.items()):
                for field, gauge in gauges.items():
                    gauge.add_metric([kind], counts[field])
            for name, depth in reading.depths.items():
                queue.add_metric([name], depth)
        return [leader, refreshes, age, *gauges.values(), queue, held, halted]


def _by_kind(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Fold the per-(kind, node) rows into per-kind counts."""
    kinds: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = kinds.setdefault(row["kind"], {"resources": 0, "not_ready": 0, "failing": 0, "max_failures": 0})
        for field in ("resources", "not_ready", "failing"):
            counts[field] += row[field]
        counts["max_failures"] = max(counts["max_failures"], row["max_failures"] or 0)
    return kinds


def serve(settings: Settings, engine: Engine, leading: Callable[[], bool]) -> threading.Event | None:
    """Serve the scheduler's metrics (and its process's) on settings.scheduler_metrics_port, unless None, and
    refresh them on a thread of their own; returns the event that stops the refreshes."""
    if settings.scheduler_metrics_port is None:
        return None
    broker = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
    fleet = FleetCollector(engine, broker, settings, leading)
    REGISTRY.register(fleet)
    stop = threading.Event()
    threading.Thread(target=fleet.refresh_until, args=(stop,), name="metrics-refresh", daemon=True).start()
    metrics.serve(REGISTRY, settings.scheduler_metrics_port, str(settings.metrics_address), "scheduler")
    return stop
