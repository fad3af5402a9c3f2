"""The wake-ups of dependencies under the races a busy fleet hits, and holds that must not spin.

Driven through the worker's own two statements (worker/store.py) on a database of its own, with no stack
running, so the interleavings are exactly the ones named."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text

from models.database import make_engine
from tests.conftest import scratch_database, wait_for
from worker import store
from worker.outcome import StatusUpdate


@pytest.fixture
def quiet(servers: tuple[str, str]) -> Iterator[Engine]:
    with scratch_database(servers[0], "races") as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


def _finish(conn: object, snap: store.Snapshot, waiting: bool = False) -> None:
    now = datetime.now(UTC)
    assert snap.status is not None
    update = StatusUpdate(
        observed_generation=snap.status["generation"], ready=True, phase="Ready", conditions=[], observed={},
        drift=[], outputs={}, consecutive_failures=0, last_error=None, last_success_at=now, next_in_s=300,
        interval_seconds=300, release_claim=True, waiting=waiting,
    )  # fmt: skip
    run = store.RunRecord(
        uid=str(snap.status["uid"]), generation=snap.status["generation"], started_at=now, finished_at=now,
        outcome="noop", actions=[], error=None, worker="test", task_id=None, attempt=0,
    )  # fmt: skip
    store.finish(conn, "Workload", "app", None, update, run, deleting=False)  # type: ignore[arg-type]


def test_an_output_changed_while_the_dependent_waited_for_its_lock_is_seen_or_looked_at_again(quiet: Engine) -> None:
    with quiet.begin() as conn:
        conn.execute(text("INSERT INTO files (name, path, content) VALUES ('conf', '/tmp/setpoint-race', 'v1')"))
        conn.execute(
            text("INSERT INTO workloads (name, command, env) VALUES ('app', 'sleep 1', :env)"),
            {"env": '{"CONFIG_SHA": "{{ File/conf.outputs.sha256 }}"}'},
        )
        conn.execute(
            text("UPDATE statuses SET ready = true, phase = 'Ready', observed_generation = generation, "
                 "outputs = '{\"sha256\": \"OLD\"}', next_reconcile_at = now() + interval '300 s', "
                 "picked_at = now() - interval '1 minute'")
        )  # fmt: skip
    committed = threading.Event()
    changed = threading.Event()

    def dependency() -> None:  # the File's record: outputs change, which wakes the workload; it commits late
        with quiet.begin() as conn:
            conn.execute(text("UPDATE statuses SET outputs = '{\"sha256\": \"NEW\"}' WHERE name = 'conf'"))
            changed.set()
            wait_for(_begin_is_waiting_for_a_lock(quiet), 10, "the dependent's begin blocked on the status row")
        committed.set()

    writer = threading.Thread(target=dependency)
    writer.start()
    assert changed.wait(10)
    with quiet.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        snap = store.begin(conn, "workloads", "Workload", "app")
        seen = [need["outputs"] for need in snap.needs]
        _finish(conn, snap)
    writer.join()
    assert committed.is_set()
    with quiet.connect() as conn:
        due_in = conn.execute(
            text("SELECT extract(epoch FROM next_reconcile_at - now()) FROM statuses WHERE name = 'app'")
        ).scalar()
    # Either this reconcile saw the new digest, or the workload is due again at once: never both missed.
    assert seen == [{"sha256": "NEW"}] or due_in <= 1, (seen, due_in)
    assert seen == [{"sha256": "NEW"}]  # the links are read again after the lock: seen at once


def _begin_is_waiting_for_a_lock(engine: Engine) -> object:
    def check() -> bool:
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                         "AND datname = current_database() AND query LIKE '%picked_at%'")
                ).scalar()
            )  # fmt: skip

    return check
