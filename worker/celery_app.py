"""The Celery app: broker settings that keep reconciles safe over Redis, shared by workers and the scheduler."""

from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging
from kombu import Queue

from setpoint import logs
from setpoint import settings as config

TASK = "setpoint.reconcile"


def queue_for(node: str | None, settings: config.Settings | None = None) -> str:
    """Resources bound to a node go to that node's queue; the rest to the queue every worker takes."""
    queue = (settings or config.get()).queue
    return f"{queue}.node.{node}" if node else queue


def make_app(settings: config.Settings) -> Celery:
    app = Celery("setpoint", broker=settings.broker_url, include=["worker.tasks"])
    # Every worker takes the shared queue and its own node's (resources bound or pinned to its node).
    queues = [Queue(settings.queue), Queue(queue_for(settings.node_name, settings))]
    app.conf.update(
        task_default_queue=settings.queue,
        task_queues=queues,
        task_routes={TASK: {"queue": settings.queue}},
        # A worker killed mid-reconcile loses nothing: the message is acknowledged only when the task ends.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Results belong in PostgreSQL (status and runs), not in a result backend.
        task_ignore_result=True,
        task_soft_time_limit=settings.soft_time_limit_seconds,
        task_time_limit=settings.time_limit_seconds,
        # Flower sees every task, with its kind and name, from the moment it is sent.
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            "socket_timeout": 10,
            "socket_connect_timeout": 10,
            "socket_keepalive": True,
            "health_check_interval": 10,
        },
    )
    limits = (settings.quick_retry_max_seconds, settings.time_limit_seconds)
    if max(limits) * 2 > settings.visibility_timeout_seconds:
        raise ValueError(
            "SETPOINT_VISIBILITY_TIMEOUT_SECONDS must be at least twice SETPOINT_TIME_LIMIT_SECONDS and "
            f"SETPOINT_QUICK_RETRY_MAX_SECONDS, got {settings.visibility_timeout_seconds} for {max(limits)}"
        )
    if settings.node_silent_seconds < 2 * settings.node_heartbeat_seconds:
        # A node must miss at least one heartbeat before it counts as lost, or live nodes flap.
        raise ValueError(
            "SETPOINT_NODE_SILENT_SECONDS must be at least twice SETPOINT_NODE_HEARTBEAT_SECONDS, got "
            f"{settings.node_silent_seconds:g} for {settings.node_heartbeat_seconds:g}"
        )
    return app


@setup_logging.connect
def _event_logs(**_: object) -> None:
    """Workers log events with fields, in the same format as the scheduler."""
    logs.configure()


app = make_app(config.get())
