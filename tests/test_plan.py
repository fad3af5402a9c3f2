"""The File controller's pure parts and the timing rules: fast, no servers needed."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from controllers.file import FileController, FileState, LeaveFile, RemoveFile, SetMode, WriteContent, digest
from models import File
from setpoint.errors import InvalidSpec
from setpoint.settings import Settings
from worker import outcome, timing

controller = FileController(Settings(state_dir="/state"))


def want(**fields: object) -> File:
    return File(**{"name": "motd", "path": "/etc/motd", "content": "hello", "mode": "0644", **fields})


def test_missing_file_is_written() -> None:
    assert controller.plan(want(), FileState(exists=False)) == [
        WriteContent("/etc/motd", "hello", "0644", "motd", "/state")
    ]


def test_different_content_is_rewritten() -> None:
    seen = FileState(True, digest("tampered"), 8, "0644")
    assert controller.plan(want(), seen) == [WriteContent("/etc/motd", "hello", "0644", "motd", "/state")]


def test_only_the_mode_differs() -> None:
    seen = FileState(True, digest("hello"), 5, "0777")
    assert controller.plan(want(mode="644"), seen) == [SetMode("/etc/motd", "644")]


def test_in_sync_plans_nothing() -> None:
    assert controller.plan(want(), FileState(True, digest("hello"), 5, "0644")) == []


def test_teardown_removes_only_what_setpoint_wrote() -> None:
    ours = FileState(True, digest("x"), 1, "0644", written_by_setpoint=True, written_by="motd")
    assert controller.teardown(want(), ours) == [RemoveFile("/etc/motd", "motd", "/state")]
    theirs = FileState(True, digest("x"), 1, "0644")
    assert controller.teardown(want(), theirs) == [
        LeaveFile("/etc/motd", "Setpoint did not write it", "motd", "/state")
    ]
    edited = FileState(True, digest("x"), 1, "0644", written_by="motd")
    assert str(controller.teardown(want(), edited)[0]) == "left /etc/motd: changed since Setpoint wrote it"
    assert controller.teardown(want(), FileState(exists=False)) == []


@pytest.mark.parametrize("path", ["etc/motd", "/etc/../shadow", "/etc/", "/", "/etc//motd", "/etc/./motd", "/etc/.."])
def test_invalid_paths_name_the_field(path: str) -> None:
    with pytest.raises(InvalidSpec, match="^path: "):
        controller.validate(want(path=path))


def test_backoff_grows_then_caps() -> None:
    rng = random.Random(1)
    delays = [timing.backoff_seconds(n, 1.0, 30.0, rng) for n in range(1, 9)]
    assert all(a < b for a, b in zip(delays[:5], delays[1:5], strict=False))
    assert delays[0] >= 1.0 and max(delays) == 30.0


def test_next_due_stays_within_the_jitter() -> None:
    rng = random.Random(2)
    dues = [timing.jittered(60, 0.1, rng) for _ in range(200)]
    assert min(dues) >= 54 and max(dues) <= 66
    assert len(set(dues)) > 100, "jitter spreads resources out"


@pytest.mark.parametrize(("failures", "doubled"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0)])
def test_backoff_is_jittered_up_to_a_fifth_above_the_doubling(failures: int, doubled: float) -> None:
    delays = [timing.backoff_seconds(failures, 1.0, 300.0, random.Random(seed)) for seed in range(300)]
    assert doubled <= min(delays) and max(delays) <= doubled * 1.2
    assert len(set(delays)) > 250, "resources failing together do not retry in lockstep"
    assert max(delays) - min(delays) > doubled * 0.15, "the jitter uses its whole spread"


def test_backoff_at_the_cap_stays_at_the_cap() -> None:
    assert {timing.backoff_seconds(12, 1.0, 300.0, random.Random(seed)) for seed in range(50)} == {300.0}


def test_next_due_spreads_both_ways_within_a_tenth() -> None:
    dues = [timing.jittered(60, 0.1, random.Random(seed)) for seed in range(300)]
    assert 54 <= min(dues) < 56 and 64 < max(dues) <= 66
    assert sum(d < 60 for d in dues) > 100 and sum(d > 60 for d in dues) > 100


def test_a_worker_backs_off_each_failing_resource_by_its_own_jittered_delay() -> None:
    settings = Settings(state_dir="/state")
    failed = outcome.Result("failed", error="connection refused", transient=True)
    now = datetime.now(UTC)
    updates = [
        outcome.status_update(
            failed,
            generation=1,
            previous={"consecutive_failures": 1},
            interval_seconds=60,
            settings=settings,
            now=now,
            rng=random.Random(seed),
        )
        for seed in range(100)
    ]
    delays = [update.next_in_s for update, _ in updates]
    assert all(d is not None and 2.0 <= d <= 2.4 for d in delays), delays
    assert len(set(delays)) > 80
    assert [retry.countdown_s for _, retry in updates if retry] == delays, "Celery's quick retry waits as long"
