"""The Workload controller's pure plan and back-off rules, as values: no processes needed."""

from __future__ import annotations

from controllers.health import Check
from controllers.processes import Replica
from controllers.workload import (
    PROGRESS_RECHECK_S,
    ForgetEnded,
    StartReplica,
    StopReplica,
    Waiting,
    WorkloadController,
    WorkloadState,
    crashloop,
    version_of,
)
from models import Workload
from setpoint.settings import Settings

settings = Settings(state_dir="/state", rollout_min_ready_seconds=5, crashloop_base_seconds=10)
controller = WorkloadController(settings)
NOW = 1_000.0


def want(**fields: object) -> Workload:
    return Workload(**{"name": "web", "command": "sleep 300", "replicas": 3, "env": {}, **fields})


def replica(slot: int, version: str, started_at: float = NOW - 60, alive: bool = True, **extra: object) -> Replica:
    return Replica(
        slot, version, f"/state/{slot}-{started_at}.json", "log", started_at, 0, pid=100 + slot, alive=alive, **extra
    )


def kinds_of(actions: list) -> list[tuple[str, int]]:
    return [
        (type(a).__name__, a.slot if isinstance(a, StartReplica) else a.replica.slot)
        for a in actions
        if isinstance(a, StartReplica | StopReplica)
    ]


def test_missing_replicas_are_started_and_extras_stopped() -> None:
    v = version_of(want())
    state = WorkloadState(NOW, (replica(0, v), replica(3, v), replica(4, v)))
    assert kinds_of(controller.plan(want(), state)) == [
        ("StopReplica", 3),
        ("StopReplica", 4),
        ("StartReplica", 1),
        ("StartReplica", 2),
    ]


def test_in_sync_plans_nothing() -> None:
    v = version_of(want())
    assert controller.plan(want(), WorkloadState(NOW, tuple(replica(s, v) for s in range(3)))) == []


def test_a_rollout_replaces_one_slot_at_a_time_new_before_old() -> None:
    old = version_of(want())
    new_spec = want(command="sleep 301")
    state = WorkloadState(NOW, tuple(replica(s, old) for s in range(3)))
    actions = controller.plan(new_spec, state)
    assert kinds_of(actions) == [("StartReplica", 0), ("StopReplica", 0)]
    assert actions[0].confirm, "the new replica must be up before the old one goes"


def test_a_rollout_waits_until_the_last_new_replica_has_settled() -> None:
    old, new = version_of(want()), version_of(want(command="sleep 301"))
    just_started = WorkloadState(NOW, (replica(0, new, started_at=NOW - 1), replica(1, old), replica(2, old)))
    assert controller.plan(want(command="sleep 301"), just_started) == []
    settled = WorkloadState(NOW, (replica(0, new, started_at=NOW - 6), replica(1, old), replica(2, old)))
    assert kinds_of(controller.plan(want(command="sleep 301"), settled)) == [("StartReplica", 1), ("StopReplica", 1)]


def test_a_slot_in_crash_back_off_is_not_restarted_before_its_time() -> None:
    v = version_of(want(replicas=1))
    ended = replica(0, v, alive=False, exit_code=3, ran_s=0.2, ended_at=NOW - 5)
    waiting = Waiting(0, 1, 10.0, NOW + 5, 3, "boom")
    early = WorkloadState(NOW, (ended,), (waiting,))
    assert controller.plan(want(replicas=1), early) == []
    assert controller.requeue_after(want(replicas=1), early) == 5.0
    late = WorkloadState(NOW + 6, (ended,), (waiting,))
    started = controller.plan(want(replicas=1), late)
    assert kinds_of(started) == [("StartReplica", 0)] and started[0].restarts == 1


def test_crash_back_off_doubles_to_its_cap_and_forgives_a_long_run() -> None:
    def after(restarts: int, ran_s: float) -> float:
        last = Replica(0, "v", "r", "l", NOW - ran_s, restarts, alive=False, ran_s=ran_s, ended_at=NOW)
        return crashloop(last, base_s=10, max_s=300).delay_s

    assert [after(n, 0.5) for n in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    assert after(6, 60) == 0, "a replica that ran a good while restarts at once"


def test_ended_records_of_running_or_removed_slots_are_forgotten() -> None:
    v = version_of(want(replicas=1))
    gone = replica(2, v, alive=False, exit_code=0, ran_s=100, ended_at=NOW - 1)
    actions = controller.plan(want(replicas=1), WorkloadState(NOW, (replica(0, v), gone)))
    assert actions == [ForgetEnded((gone.record,))]


def test_a_crash_looping_slot_keeps_only_its_last_ended_record() -> None:
    v = version_of(want(replicas=1))
    first = replica(0, v, started_at=NOW - 30, alive=False, exit_code=1, ran_s=0.1, ended_at=NOW - 29)
    last = replica(0, v, started_at=NOW - 20, alive=False, exit_code=1, ran_s=0.1, ended_at=NOW - 19)
    waiting = Waiting(0, 2, 20.0, NOW + 1, 1, "")
    actions = controller.plan(want(replicas=1), WorkloadState(NOW, (first, last), (waiting,)))
    assert actions == [ForgetEnded((first.record,))], "the last one holds the slot's crash-loop count"


def test_a_rollout_in_progress_is_progressing_with_the_count_updated() -> None:
    old, new = version_of(want()), version_of(want(command="sleep 301"))
    state = WorkloadState(NOW, (replica(0, new, started_at=NOW - 1), replica(1, old), replica(2, old)))
    health = controller.health(want(command="sleep 301"), state)
    assert (health.healthy, health.progressing, health.reason) == (False, True, "RollingUpdate")
    assert health.message == "1/3 replicas updated"


def test_starting_replicas_are_progressing_and_a_crash_loop_is_not() -> None:
    v = version_of(want())
    starting = controller.health(want(), WorkloadState(NOW, (replica(0, v),)))
    assert (starting.progressing, starting.reason) == (True, "Progressing")
    ended = replica(1, v, alive=False, exit_code=3, ran_s=0.2, ended_at=NOW - 5)
    looping = WorkloadState(NOW, (replica(0, v), ended), (Waiting(1, 1, 10.0, NOW + 5, 3, "boom"),))
    crashing = controller.health(want(replicas=2), looping)
    assert (crashing.progressing, crashing.reason) == (False, "CrashLoopBackOff")


def test_a_failing_check_is_progressing_only_while_its_replica_is_new() -> None:
    v = version_of(want(replicas=1))
    failing = (Check(0, False, "connection refused"),)
    young = WorkloadState(NOW, (replica(0, v, started_at=NOW - 1),), checks=failing)
    starting = controller.health(want(replicas=1), young)
    assert (starting.progressing, starting.reason) == (True, "Progressing")
    assert "replica 0 starting: connection refused" in starting.message
    assert controller.requeue_after(want(replicas=1), young) == PROGRESS_RECHECK_S, (
        "looked at again soon, not after the interval"
    )
    settled = WorkloadState(NOW, (replica(0, v, started_at=NOW - 6),), checks=failing)
    health = controller.health(want(replicas=1), settled)
    assert (health.progressing, health.reason) == (False, "Unhealthy")


def test_setting_run_as_rolls_replicas_started_as_another_user() -> None:
    assert version_of(want(), None) == version_of(want()), "unset: replicas started before keep running"
    started_as_worker = WorkloadState(NOW, tuple(replica(s, version_of(want())) for s in range(3)))
    contained = WorkloadController(Settings(state_dir="/nonexistent", run_as="nobody"))
    actions = contained.plan(want(), started_as_worker)
    assert kinds_of(actions) == [("StartReplica", 0), ("StopReplica", 0)], "rolled over to the user now set"
