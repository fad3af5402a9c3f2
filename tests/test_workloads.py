"""Workloads heal themselves: real replica processes started, healed, scaled, rolled out and stopped from SQL."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import psutil
from sqlalchemy import Engine

from models.database import make_engine
from tests.conftest import replicas_of, start_scheduler, start_worker, wait_for
from tests.helpers import ready_at, runs, sql, status


def insert_workload(engine: Engine, name: str, command: str, replicas: int, **extra: object) -> None:
    columns = ["name", "command", "replicas", "interval_seconds", *extra]
    values = {"name": name, "command": command, "replicas": replicas, "interval_seconds": 1, **extra}
    sql(
        engine, f"INSERT INTO workloads ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})", **values
    )


def running(name: str, count: int) -> list[psutil.Process] | None:
    found = replicas_of(name)
    return found if len(found) == count else None


def slots(processes: list[psutil.Process]) -> dict[int, int]:
    return {int(p.environ()["SETPOINT_REPLICA"]): p.pid for p in processes}


def test_three_replicas_start_and_killed_ones_come_back(stack: dict, engine: Engine, unique: str) -> None:
    insert_workload(engine, unique, "sleep 300", 3)
    row = wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 30, "three replicas running")
    first = slots(wait_for(lambda: running(unique, 3), 5, "three processes"))
    assert sorted(first) == [0, 1, 2]
    assert next(c for c in row["conditions"] if c["type"] == "Healthy")["message"] == "3/3 replicas running"
    assert all(p.cmdline() == ["sleep", "300"] for p in replicas_of(unique)), "no shell when none is needed"
    for slot in (0, 2):  # lightning strikes
        os.kill(first[slot], signal.SIGKILL)
    healed = slots(wait_for(lambda: running(unique, 3), 20, "replicas back"))
    assert healed[1] == first[1] and healed[0] != first[0] and healed[2] != first[2]
    wait_for(lambda: (s := status(engine, unique, "Workload")) and s["ready"], 20, "ready again")


def test_scale_down_stops_the_extra_replicas(stack: dict, engine: Engine, unique: str) -> None:
    insert_workload(engine, unique, "sleep 300", 3)
    before = slots(wait_for(lambda: running(unique, 3), 30, "three replicas"))
    sql(engine, "UPDATE workloads SET replicas = 1 WHERE name = :n", n=unique)
    after = wait_for(lambda: running(unique, 1), 20, "one replica left")
    assert slots(after) == {0: before[0]}, "the first replica is kept, the others stopped"
    wait_for(lambda: ready_at(engine, unique, 2, "Workload"), 20, "scaled and ready")


def test_a_command_change_rolls_out_one_replica_at_a_time(stack: dict, engine: Engine, unique: str) -> None:
    insert_workload(engine, unique, "sleep 300", 3)
    wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 30, "three replicas running")
    seen: list[tuple[int, int]] = []  # (old, new) replica counts over the rollout
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            procs = replicas_of(unique)
            try:
                commands = [p.cmdline()[-1] for p in procs]
            except (psutil.Error, IndexError):  # an exiting process's cmdline is empty: look again
                continue
            seen.append((commands.count("300"), commands.count("301")))
            done.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        sql(engine, "UPDATE workloads SET command = 'sleep 301' WHERE name = :n", n=unique)
        wait_for(lambda: ready_at(engine, unique, 2, "Workload") and seen and seen[-1] == (0, 3), 60, "rolled out")
    finally:
        done.set()
        watcher.join()
    assert all(old + new >= 3 for old, new in seen), "never fewer replicas than wanted during the rollout"
    assert all(old + new <= 4 for old, new in seen), "one replica replaced at a time"
    assert {new for _, new in seen} >= {0, 1, 2, 3}
    actions = [a for r in runs(engine, unique, "Workload") if r["generation"] == 2 for a in r["actions"]]
    assert [a.split(" (")[0] for a in actions] == [
        f"{verb} replica {slot}" for slot in range(3) for verb in ("start", "stop")
    ], "each slot's new replica starts before its old one stops"


def test_a_crash_looping_command_shows_growing_delays(stack: dict, engine: Engine, unique: str) -> None:
    insert_workload(engine, unique, "sh -c 'echo boom >&2; exit 3'", 1)
    backoffs: list[float] = []

    def third_restart() -> dict | None:
        row = status(engine, unique, "Workload")
        waiting = (row or {}).get("observed", {}).get("waiting", [])
        if waiting and waiting[0]["backoff_s"] not in backoffs:
            backoffs.append(waiting[0]["backoff_s"])
        return row if len(backoffs) >= 3 else None

    row = wait_for(third_restart, 40, "three back-offs")
    assert backoffs[:3] == [0.5, 1.0, 2.0], backoffs
    starts = [
        r["started_at"] for r in runs(engine, unique, "Workload") if any("start replica" in a for a in r["actions"])
    ]
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
    assert all(gap >= 0.5 * 2**k for k, gap in enumerate(gaps[:3])), f"restarts must wait out the back-off: {gaps}"
    healthy = next(c for c in row["conditions"] if c["type"] == "Healthy")
    assert healthy["reason"] == "CrashLoopBackOff" and healthy["status"] == "False"
    assert "code 3" in healthy["message"] and "boom" in healthy["message"]
    assert row["phase"] == "Degraded" and not row["ready"]


def test_delete_stops_every_replica(stack: dict, engine: Engine, unique: str) -> None:
    insert_workload(engine, unique, "sleep 300", 2)
    wait_for(lambda: running(unique, 2), 30, "two replicas")
    sql(engine, "DELETE FROM workloads WHERE name = :n", n=unique)
    wait_for(lambda: running(unique, 0) is not None, 30, "no replica left")
    wait_for(lambda: status(engine, unique, "Workload") is None, 20, "tombstone cleared")
    assert not (Path(stack["SETPOINT_STATE_DIR"]) / "workloads" / unique).exists(), "records and logs removed"


def test_a_paused_workload_reports_drift_and_is_left_alone(stack: dict, engine: Engine, unique: str) -> None:
    insert_workload(engine, unique, "sleep 300", 2)
    wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 30, "running")
    sql(engine, "UPDATE workloads SET paused = true WHERE name = :n", n=unique)
    wait_for(lambda: ready_at(engine, unique, 2, "Workload"), 20, "pause observed")
    victim = replicas_of(unique)[0]
    victim.kill()
    row = wait_for(lambda: (s := status(engine, unique, "Workload")) and s["phase"] == "Drifted" and s, 20, "drift")
    assert "start replica" in row["drift"][0]["change"]
    assert len(replicas_of(unique)) == 1, "nothing restarted while paused"


def test_health_checks_are_a_condition_apart_from_sync(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    marker = tmp_path / "healthy"
    insert_workload(engine, unique, "sleep 300", 2, health_command=f"test -f {marker}-$SETPOINT_REPLICA")

    def unhealthy() -> dict | None:
        row = status(engine, unique, "Workload")
        healthy = {c["type"]: c for c in (row or {}).get("conditions", [])}.get("Healthy", {})
        return row if row and row["phase"] == "Degraded" and healthy.get("reason") == "Unhealthy" else None

    row = wait_for(unhealthy, 30, "running but unhealthy")
    conditions = {c["type"]: c for c in row["conditions"]}
    assert conditions["Synced"]["status"] == "True" and conditions["Healthy"]["status"] == "False"
    assert conditions["Healthy"]["reason"] == "Unhealthy"
    for slot in (0, 1):
        Path(f"{marker}-{slot}").touch()
    wait_for(lambda: (s := status(engine, unique, "Workload")) and s["ready"], 20, "healthy and ready")


def test_a_worker_restart_leaves_replicas_running_and_counted(fresh: dict, tmp_path: Path, unique: str) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker(fresh, tmp_path / "worker.log")
    replacement = None
    try:
        insert_workload(engine, unique, "sleep 300", 2)
        before = slots(wait_for(lambda: running(unique, 2), 30, "two replicas"))
        wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 30, "ready")
        worker.kill()  # SIGKILL to the worker and its pool processes at once
        assert slots(replicas_of(unique)) == before, "killing the worker leaves the replicas running"
        count = len(runs(engine, unique, "Workload"))
        replacement = start_worker(fresh, tmp_path / "replacement.log", name="w2")
        wait_for(lambda: len(runs(engine, unique, "Workload")) > count + 1, 30, "the new worker reconciling")
        assert slots(replicas_of(unique)) == before, "found again, not started twice"
        newest = runs(engine, unique, "Workload")[-1]
        assert newest["outcome"] == "noop" and newest["worker"].startswith("w2@")
        pids = sorted(r["pid"] for r in status(engine, unique, "Workload")["observed"]["replicas"] if r["alive"])
        assert pids == sorted(before.values())
    finally:
        if replacement:
            replacement.stop()
        scheduler.stop()
        engine.dispose()


def test_a_workload_bound_to_a_node_runs_only_on_that_nodes_workers(fresh: dict, tmp_path: Path, unique: str) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    anywhere = start_worker({**fresh, "SETPOINT_NODE": "n0"}, tmp_path / "anywhere.log", name="anywhere")
    node = None
    try:
        insert_workload(engine, unique, "sleep 300", 1, node="n1")
        insert_workload(engine, f"{unique}-free", "sleep 300", 1)
        wait_for(lambda: ready_at(engine, f"{unique}-free", 1, "Workload"), 30, "unbound workload runs anywhere")
        assert runs(engine, unique, "Workload") == [], "no worker of node n1 yet: never reconciled elsewhere"
        node = start_worker({**fresh, "SETPOINT_NODE": "n1"}, tmp_path / "n1.log", name="n1")
        wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 30, "reconciled once n1 has a worker")
        assert {r["worker"].split("@")[0] for r in runs(engine, unique, "Workload")} == {"n1"}
        # The unbound one stays with the worker that first started it (its replicas live there).
        assert {r["worker"].split("@")[0] for r in runs(engine, f"{unique}-free", "Workload")} == {"anywhere"}
    finally:
        for worker in (node, anywhere):
            if worker:
                worker.stop()
        scheduler.stop()
        engine.dispose()


def test_stopping_a_replica_ends_its_whole_process_group_after_the_grace(
    stack: dict, engine: Engine, unique: str
) -> None:
    # A shell that ignores SIGTERM and has a child: both must be gone, SIGKILLed after the grace period.
    insert_workload(engine, unique, "trap '' TERM; sleep 300 & sleep 301", 1, stop_grace_seconds=0.5)
    wait_for(lambda: len(replicas_of(unique)) >= 3, 30, "shell and its two sleeps running")
    sql(engine, "DELETE FROM workloads WHERE name = :n", n=unique)
    wait_for(lambda: replicas_of(unique) == [], 30, "the whole group gone")
    wait_for(lambda: status(engine, unique, "Workload") is None, 20, "deleted")
