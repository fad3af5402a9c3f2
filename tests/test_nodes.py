"""Worker nodes: each heartbeats; a silent node's resources say so, its queue holds one message per resource,
and an admin moves its resources elsewhere (`setpoint node drain`) or forgets it (`setpoint node forget`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import redis
from pydantic import ValidationError
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from models.database import libpq_url, make_engine
from setpoint.settings import Settings
from tests.conftest import ROOT, alembic, scratch_database, start_scheduler, start_worker, wait_for
from tests.helpers import ready_at, sql, status, view

FAST_NODES = {
    "SETPOINT_NODE_HEARTBEAT_SECONDS": "0.5",
    "SETPOINT_NODE_SILENT_SECONDS": "2",
    "SETPOINT_DEFAULT_INTERVAL_SECONDS": "1",
}


def setpoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "setpoint.cli", *args],
        cwd=ROOT,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def node_lost(engine: Engine, name: str, node: str, kind: str = "File") -> dict | None:
    """The resource's status once it reports its node lost: not ready, phase Unknown, the Ready condition NodeLost."""
    row = status(engine, name, kind)
    if not row or row["ready"] or row["phase"] != "Unknown":
        return None
    ready = [c for c in row["conditions"] if c["type"] == "Ready"]
    if ready and ready[0]["reason"] == "NodeLost" and f"node {node} " in ready[0]["message"]:
        return row
    return None


def test_a_silent_nodes_queue_holds_one_message_per_resource_and_its_resources_say_why(
    fresh: dict, tmp_path: Path
) -> None:
    env = {**fresh, **FAST_NODES}
    engine = make_engine(env["SETPOINT_DATABASE_URL"])
    broker = redis.Redis.from_url(env["SETPOINT_BROKER_URL"])
    queue = f"{env['SETPOINT_QUEUE']}.node.ghost"
    names = [f"bound-{i}" for i in range(3)]
    scheduler = start_scheduler(env, tmp_path / "scheduler.log")
    try:
        for name in names:  # bound to a node no worker runs on, due every second
            sql(
                engine,
                "INSERT INTO workloads (name, command, node, interval_seconds) VALUES (:n, 'sleep 300', 'ghost', 1)",
                n=name,
            )
        wait_for(lambda: broker.llen(queue) == len(names), 20, "one message per resource sent")
        for name in names:
            wait_for(lambda n=name: node_lost(engine, n, "ghost", "Workload"), 20, f"{name} reported NodeLost")
        assert "has never been seen" in view(engine, names[0], "Workload")["message"]  # type: ignore[index]
        # Five intervals on, the messages waiting for the node have not piled up.
        watched_until = time.monotonic() + 5
        lengths = set()
        while time.monotonic() < watched_until:
            lengths.add(broker.llen(queue))
            time.sleep(0.1)  # sampling the queue's length, not waiting for something
        assert lengths == {len(names)}, f"queue lengths seen: {sorted(lengths)}"
        # Forgetting the node deletes its queue: the node re-created under another name leaves nothing behind.
        forgotten = setpoint(env, "node", "forget", "ghost")
        assert forgotten.returncode == 0, forgotten.stderr
        assert f"queue {queue} of node ghost deleted (3 superseded messages)" in forgotten.stdout
        assert broker.llen(queue) == 0
    finally:
        scheduler.stop()
        broker.delete(queue)
        broker.close()
        engine.dispose()


def test_a_worker_back_under_another_node_name_takes_over_after_a_drain(fresh: dict, tmp_path: Path) -> None:
    env = {**fresh, **FAST_NODES}
    engine = make_engine(env["SETPOINT_DATABASE_URL"])
    broker = redis.Redis.from_url(env["SETPOINT_BROKER_URL"])
    old_queue = f"{env['SETPOINT_QUEUE']}.node.node-a"
    scheduler = start_scheduler(env, tmp_path / "scheduler.log")
    old = start_worker({**env, "SETPOINT_NODE": "node-a"}, tmp_path / "a.log", name="a")
    new = None
    changed, deleted = tmp_path / "changed", tmp_path / "deleted"
    try:
        for name, path in (("changed", changed), ("deleted", deleted)):
            sql(engine, "INSERT INTO files (name, path, content) VALUES (:n, :p, 'one')", n=name, p=str(path))
        for name in ("changed", "deleted"):
            wait_for(lambda n=name: ready_at(engine, n, 1), 60, f"{name} ready on node-a")
            assert status(engine, name)["node"] == "node-a"  # type: ignore[index]

        old.kill()  # compose re-creates the container: the same worker comes back with another host name
        new = start_worker({**env, "SETPOINT_NODE": "node-b"}, tmp_path / "b.log", name="b")
        sql(engine, "UPDATE files SET content = 'two' WHERE name = 'changed'")
        sql(engine, "DELETE FROM files WHERE name = 'deleted'")
        lost = wait_for(lambda: node_lost(engine, "changed", "node-a"), 20, "the change reported NodeLost")
        assert (lost["generation"], lost["observed_generation"]) == (2, 1)
        assert "node node-a has been silent since" in view(engine, "changed")["message"]  # type: ignore[index]

        listed = setpoint(env, "node", "list")
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[1:] if line.strip()}
        assert rows == {"node-a": "silent", "node-b": "alive"}, listed.stdout

        unknown = setpoint(env, "node", "drain", "node-x", "--to", "node-b")
        assert unknown.returncode == 2 and "unknown node 'node-x'" in unknown.stderr, unknown.stderr
        to_nowhere = setpoint(env, "node", "drain", "node-a", "--to", "node-x")
        assert to_nowhere.returncode == 2 and "no live worker" in to_nowhere.stderr, to_nowhere.stderr
        busy = setpoint(env, "node", "drain", "node-b", "--to", "node-a")
        assert busy.returncode == 2 and "is alive" in busy.stderr, busy.stderr

        wait_for(lambda: broker.llen(old_queue) > 0, 20, "messages waiting for node-a")
        drained = setpoint(env, "node", "drain", "node-a", "--to", "node-b")
        assert drained.returncode == 0, drained.stderr
        assert "file/changed moved to node-b" in drained.stdout and "file/deleted moved to node-b" in drained.stdout
        assert f"queue {old_queue} of node node-a deleted" in drained.stdout  # nothing is left on node-a
        assert broker.llen(old_queue) == 0
        wait_for(lambda: ready_at(engine, "changed", 2), 30, "the change made on node-b")
        assert changed.read_text() == "two" and status(engine, "changed")["node"] == "node-b"  # type: ignore[index]
        wait_for(lambda: status(engine, "deleted") is None, 30, "the delete finished on node-b")
        assert not deleted.exists()
        sql(engine, "INSERT INTO files (name, path, content) VALUES ('deleted', :p, 'again')", p=str(deleted))
        wait_for(lambda: ready_at(engine, "deleted", 1), 30, "the name used again")
    finally:
        if new:
            new.stop()
        scheduler.stop()
        broker.delete(old_queue)
        broker.close()
        engine.dispose()


def test_forgetting_a_gone_node_unpins_its_resources_and_frees_its_tombstones(fresh: dict, tmp_path: Path) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    try:
        with engine.begin() as conn:
            for name in ("kept", "tomb"):
                conn.execute(
                    text("INSERT INTO files (name, path) VALUES (:n, :p)"), {"n": name, "p": str(tmp_path / name)}
                )
            conn.execute(text("UPDATE statuses SET node = 'gone-host'"))
            conn.execute(text("INSERT INTO workloads (name, command, node) VALUES ('bound', 'sleep 1', 'gone-host')"))
            conn.execute(text("DELETE FROM files WHERE name = 'tomb'"))
        unknown = setpoint(fresh, "node", "forget", "no-such-host")
        assert unknown.returncode == 2 and "unknown node 'no-such-host'" in unknown.stderr, unknown.stderr

        no_broker = setpoint({**fresh, "SETPOINT_BROKER_URL": "redis://127.0.0.1:1/0"}, "node", "forget", "gone-host")
        assert no_broker.returncode == 1 and "cannot reach the broker" in no_broker.stderr, no_broker.stderr
        assert "Traceback" not in no_broker.stderr
        assert status(engine, "kept")["node"] == "gone-host", "nothing changed"  # type: ignore[index]

        forgotten = setpoint(fresh, "node", "forget", "gone-host")
        assert forgotten.returncode == 0, forgotten.stderr
        assert "file/kept unpinned" in forgotten.stdout and "file/tomb forgotten" in forgotten.stdout
        assert "workload/bound names node gone-host in its desired row" in forgotten.stderr
        kept, bound = status(engine, "kept"), status(engine, "bound", "Workload")
        assert kept is not None and kept["node"] is None and kept["enqueued_at"] is None
        assert bound is not None and bound["node"] == "gone-host", "a desired binding is the admin's to change"
        sql(engine, "INSERT INTO files (name, path) VALUES ('tomb', :p)", p=str(tmp_path / "tomb"))  # reusable
    finally:
        engine.dispose()


def test_a_drain_keeps_the_queue_of_a_node_something_is_still_bound_to(fresh: dict) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    broker = redis.Redis.from_url(fresh["SETPOINT_BROKER_URL"])
    queue = f"{fresh['SETPOINT_QUEUE']}.node.gone-host"
    try:
        sql(engine, "INSERT INTO workloads (name, command, node) VALUES ('bound', 'sleep 1', 'gone-host')")
        sql(engine, "INSERT INTO nodes (name, started_at, last_seen_at) VALUES ('live-host', now(), now())")
        broker.rpush(queue, "a message for workload/bound")
        drained = setpoint(fresh, "node", "drain", "gone-host", "--to", "live-host")
        assert drained.returncode == 0, drained.stderr
        assert "deleted" not in drained.stdout and broker.llen(queue) == 1, "workload/bound still lives there"
        forgotten = setpoint(fresh, "node", "forget", "gone-host")
        assert forgotten.returncode == 0, forgotten.stderr
        assert f"queue {queue} of node gone-host deleted (1 superseded message)" in forgotten.stdout
        assert broker.llen(queue) == 0
    finally:
        broker.delete(queue)
        broker.close()
        engine.dispose()


def test_node_names_are_checked_where_they_are_written(fresh: dict, tmp_path: Path) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    try:
        for statement in (
            "INSERT INTO workloads (name, command, node) VALUES ('w', 'sleep 1', 'bad name; rm -rf')",
            "INSERT INTO nodes (name, started_at, last_seen_at) VALUES ('-dash', now(), now())",
        ):
            with pytest.raises(IntegrityError, match="node_format|name_format"):
                sql(engine, statement)
        sql(engine, "INSERT INTO files (name, path) VALUES ('f', '/tmp/f')")
        with pytest.raises(IntegrityError, match="ck_statuses_node_format"):
            sql(engine, "UPDATE statuses SET node = 'a/b' WHERE name = 'f'")
    finally:
        engine.dispose()


def test_the_upgrade_names_the_rows_whose_node_is_refused_and_changes_nothing(servers: tuple[str, str]) -> None:
    with scratch_database(servers[0], "nodes", migrate=False) as url:
        alembic("upgrade", "0005", database_url=url)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("INSERT INTO workloads (name, command, node) VALUES ('web', 'sleep 1', 'web_1:a')")
            conn.execute("INSERT INTO files (name, path) VALUES ('motd', '/srv/motd')")
            conn.execute("UPDATE statuses SET node = 'bad host' WHERE name = 'motd'")
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env={**os.environ, "SETPOINT_DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0
        assert "CheckViolation" not in done.stderr, done.stderr[-600:]
        for named in (
            "workloads web (node 'web_1:a')",
            "statuses Workload/web (node 'web_1:a')",
            "statuses File/motd (node 'bad host')",
            "insert it again with a valid node",
        ):
            assert named in done.stderr, done.stderr
        assert "0005" in alembic("current", database_url=url).stdout


def test_a_node_name_that_cannot_name_a_queue_is_refused_in_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SETPOINT_NODE", "a b:c")
    with pytest.raises(ValidationError, match="node"):
        Settings()
