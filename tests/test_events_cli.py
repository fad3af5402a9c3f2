"""`setpoint events [-w]` and `setpoint get -w`, run as a user runs them (subprocesses) on the session's stack."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.conftest import ROOT, wait_for
from tests.helpers import ready_at, sql, unwatched
from tests.test_cli import setpoint
from tests.test_events import HOUR, types


class Watching:
    """A `setpoint ... -w` process whose output lines are read as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "setpoint.cli", *args],
            cwd=ROOT,
            env={**env, "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))

    def line_with(self, *words: str, timeout_s: float = 20) -> str:
        """The next line holding every one of `words` (earlier ones are passed over)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if all(word in line for word in words):
                return line
        stderr = self.popen.stderr.read() if self.popen.poll() is not None and self.popen.stderr else ""
        raise AssertionError(f"no line with {words} within {timeout_s}s; {stderr}")

    def interrupt(self) -> int:
        """Ctrl-C, as a user ends a watch; its exit code."""
        self.popen.send_signal(signal.SIGINT)
        return self.popen.wait(10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def watching() -> Iterator[list[Watching]]:
    started: list[Watching] = []
    yield started
    for each in started:
        each.stop()


def new_file(engine: Engine, name: str, path: Path) -> None:
    sql(
        engine,
        "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, 'one', :i)",
        n=name,
        p=str(path),
        i=HOUR,
    )


def test_events_lists_what_happened_and_filters_it(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    new_file(engine, unique, tmp_path / "f")

    wait_for(lambda: types(engine, unique) == ["Ready"], 20, "its Ready event")
    done = setpoint(stack, "events", "--name", unique)
    assert done.returncode == 0, done.stderr
    assert f"File/{unique}" in done.stdout and "Ready" in done.stdout and "generation 1 applied" in done.stdout
    listed = json.loads(setpoint(stack, "events", "--kind", "files", "--name", unique, "-o", "json").stdout)
    assert [(e["kind"], e["name"], e["type"]) for e in listed] == [("File", unique, "Ready")]
    assert setpoint(stack, "events", "--name", unique, "--type", "Failed", "-o", "json").stdout.strip() == "[]"
    refused = setpoint(stack, "events", "--type", "Exploded")
    assert refused.returncode == 2 and "unknown event type 'Exploded'" in refused.stderr


def test_events_watch_prints_a_line_as_it_happens_and_ctrl_c_exits_0(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path, watching: list[Watching]
) -> None:
    new_file(engine, unique, tmp_path / "f")

    wait_for(lambda: ready_at(engine, unique, 1), 20, "ready")
    watch = Watching(stack, "events", "-w", "--name", unique)
    watching.append(watch)
    watch.line_with(f"File/{unique}", "Ready", "generation 1")  # the list: it is reading
    sql(engine, "UPDATE files SET content = 'two' WHERE name = :n", n=unique)
    watch.line_with(f"File/{unique}", "Ready", "gen 2", "generation 2 applied")  # live
    assert watch.interrupt() == 0


def test_get_watch_prints_a_new_row_when_the_resource_changes(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path, watching: list[Watching]
) -> None:
    new_file(engine, unique, tmp_path / "f")

    wait_for(lambda: ready_at(engine, unique, 1), 20, "ready")
    watch = Watching(stack, "get", "file", unique, "-w")
    watching.append(watch)
    watch.line_with("NAME", "READY", "PHASE")
    watch.line_with(unique, "yes", "Ready", "1/1")
    sql(engine, "UPDATE files SET content = 'two' WHERE name = :n", n=unique)
    watch.line_with(unique, "yes", "Ready", "2/2", "generation 2 applied")
    sql(engine, "DELETE FROM files WHERE name = :n", n=unique)
    watch.line_with(unique, "Deleted", "torn down")
    assert watch.interrupt() == 0


def test_get_watch_refuses_an_output_other_than_the_table(stack: dict[str, str]) -> None:
    done = setpoint(stack, "get", "files", "-w", "-o", "json")
    assert done.returncode == 2 and "--watch prints a table" in done.stderr


HOSTILE = "\x1b[2J\x1b]0;owned\x07cleared\rthe screen\nand more"
"""A message that would clear the screen, retitle the window and overwrite its own line, were it printed raw."""

SAY_READY = """UPDATE statuses SET phase = 'Ready', ready = true, observed_generation = 1, last_reconcile_at = now(),
    conditions = jsonb_build_array(jsonb_build_object('type', 'Ready', 'status', 'True', 'reason', 'InSync',
    'message', CAST(:m AS text)))
WHERE kind = 'File' AND name = :n"""
SAY_FAILED = """UPDATE statuses SET phase = 'Failed', ready = false, last_error = CAST(:m AS text),
    observed_generation = 1, last_reconcile_at = now(), conditions = jsonb_build_array(jsonb_build_object(
    'type', 'Ready', 'status', 'False', 'reason', 'ReconcileError', 'message', CAST(:m AS text)))
WHERE kind = 'File' AND name = :n"""


def test_no_terminal_control_sequence_from_the_database_reaches_the_terminal(
    stack: dict[str, str], engine: Engine, unique: str, watching: list[Watching]
) -> None:
    unwatched(engine, "INSERT INTO files (name, path) VALUES (:n, '/nonexistent/ctl/' || CAST(:n AS varchar))", unique)
    sql(engine, SAY_READY, n=unique, m="warm")
    wait_for(lambda: types(engine, unique) == ["Ready"], 10, "its first event")
    watch_events = Watching(stack, "events", "-w", "--name", unique)
    watch_get = Watching(stack, "get", "file", unique, "-w")
    watching += [watch_events, watch_get]
    watch_events.line_with(f"File/{unique}", "Ready", "warm")  # past their lists: what comes next is printed
    watch_get.line_with(unique, "Ready")
    sql(engine, SAY_FAILED, n=unique, m=HOSTILE)
    live = watch_events.line_with(f"File/{unique}", "Failed", "cleared")
    row = watch_get.line_with(unique, "Failed", "cleared")
    listed = setpoint(stack, "events", "--name", unique)
    assert listed.returncode == 0 and "cleared" in listed.stdout, listed.stderr
    for shown in (live, row, listed.stdout):
        assert not any(c in shown for c in "\x1b\x07\r"), repr(shown)
    assert "[2J]0;ownedclearedthe screen and more" in live.replace("  ", " ")
