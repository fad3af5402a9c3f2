"""The File controller's pure parts and the timing rules: fast, no servers needed."""

from __future__ import annotations

import random

import pytest

from controllers.file import FileController, FileState, LeaveFile, RemoveFile, SetMode, WriteContent, digest
from models import File
from setpoint.errors import InvalidSpec
from setpoint.settings import Settings
from worker import timing

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
