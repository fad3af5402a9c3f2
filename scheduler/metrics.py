"""The scheduler's Prometheus metrics: how late it enqueues, and the fleet's state as the database and broker
hold it, read once per scrape by the active scheduler rather than by every worker.

Reading at scrape time keeps the numbers as fresh as the scrape and costs one grouped query over `statuses`
and one LLEN per queue, whatever the number of workers. Standby schedulers report only that they stand by,
so sums over every scheduler count each resource once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import redis
from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

from setpoint.settings import Settings
from worker import metrics
from worker.celery_app import queue_for

log = logging.getLogger("setpoint.metrics")

ENQUEUE_LAG = Histogram(
    "setpoint_enqueue_lag_seconds",
    "How long after a resource fell due the scheduler claimed and enqueued its reconcile.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)

QUERY_TIMEOUT_MS = 5000
"""A scrape gives up on a slow database rather than hold a connection the scheduler needs."""

_STATE = text("""
SELECT kind, node,
       count(*) AS resources,
       count(*) FILTER (WHERE NOT ready) AS not_ready,
       count(*) FILTER (WHERE consecutive_failures > 0) AS failing,
       max(consecutive_failures) AS max_failures
FROM statuses GROUP BY kind, node
""")


class FleetCollector(Collector):
    """Gauges read at each scrape: resources by kind from `statuses`, and messages waiting in each queue."""

    def __init__(self, engine: Engine, broker: redis.Redis, settings: Settings, leading: Callable[[], bool]) -> None:
        self.engine = engine
        self.broker = broker
        self.settings = settings
        self.leading = leading

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families({}, {}, False)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        if not self.leading():
            return self._families({}, {}, False)
        rows = self._read_statuses()
        nodes = {row["node"] for row in rows if row["node"]}
        queues = [self.settings.queue, *sorted(queue_for(node, self.settings) for node in nodes)]
        return self._families(_by_kind(rows), self._depths(queues), True)

    def _read_statuses(self) -> list[dict[str, Any]]:
        try:
            with self.engine.begin() as conn:
                conn.execute(text(f"SET LOCAL statement_timeout = {QUERY_TIMEOUT_MS}"))
                return [dict(row) for row in conn.execute(_STATE).mappings()]
        except Exception as error:
            log.warning("metrics could not read statuses", extra={"error": str(error)})
            return []

    def _depths(self, queues: list[str]) -> dict[str, int]:
        try:
            with self.broker.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.llen(queue)
                return dict(zip(queues, pipe.execute(), strict=True))
        except Exception as error:
            log.warning("metrics could not read queue lengths", extra={"error": str(error)})
            return {}

    @staticmethod
    def _families(kinds: dict[str, dict[str, int]], depths: dict[str, int], leading: bool) -> list[GaugeMetricFamily]:
        leader = GaugeMetricFamily(
            "setpoint_scheduler_leader", "1 while this scheduler is the active one, 0 while it stands by."
        )
        leader.add_metric([], 1 if leading else 0)
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
        for kind, counts in sorted(kinds.items()):
            for field, gauge in gauges.items():
                gauge.add_metric([kind], counts[field])
        queue = GaugeMetricFamily(
            "setpoint_queue_messages",
            "Queue depth: messages waiting in a Celery queue (Redis LLEN), not counting those workers hold.",
            labels=["queue"],
        )
        for name, depth in depths.items():
            queue.add_metric([name], depth)
        return [leader, *gauges.values(), queue]


def _by_kind(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Fold the per-(kind, node) rows into per-kind counts."""
    kinds: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = kinds.setdefault(row["kind"], {"resources": 0, "not_ready": 0, "failing": 0, "max_failures": 0})
        for field in ("resources", "not_ready", "failing"):
            counts[field] += row[field]
        counts["max_failures"] = max(counts["max_failures"], row["max_failures"] or 0)
    return kinds


def serve(settings: Settings, engine: Engine, leading: Callable[[], bool]) -> None:
    """Serve the scheduler's metrics (and its process's) on settings.scheduler_metrics_port, unless None."""
    if settings.scheduler_metrics_port is None:
        return
    broker = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
    REGISTRY.register(FleetCollector(engine, broker, settings, leading))
    metrics.serve(REGISTRY, settings.scheduler_metrics_port, "scheduler")
