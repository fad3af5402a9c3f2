"""What a new user meets first: `setpoint up` in a fresh folder, and the commands run beside it in a second terminal.

Each test runs the real `setpoint` command from a folder of its own with nothing configured, as the quick start
says: embedded servers, their URLs found by the other commands through `.setpoint/urls.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from setpoint.settings import Settings
from tests.conftest import ROOT, replicas_of, stop_replicas, wait_for
from worker import metrics


def bare_env() -> dict[str, str]:
    """A shell with nothing of Setpoint's configured, running this checkout's code from any folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETPOINT_")}
    return {**env, "PYTHONPATH": str(ROOT), "COLUMNS": "300"}


def setpoint(folder: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "setpoint.cli", *args]
    return subprocess.run(argv, cwd=folder, env=bare_env(), input=stdin, capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def up(folder: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`setpoint up` running in `folder` until it prints that it runs; Ctrl-C'd (or killed) at the end."""
    log = folder / "up.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "setpoint.cli", "up", *args],
        cwd=folder,
        env=bare_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: "running:" in log.read_text() or proc.poll() is not None, 120, "setpoint up running")
        assert proc.poll() is None, log.read_text()
        yield proc, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        stop_replicas(folder / ".setpoint" / "state")


def ctrl_c(proc: subprocess.Popen[bytes], log: Path) -> str:
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    assert proc.wait(60) == 0, log.read_text()
    return log.read_text()


@contextlib.contextmanager
def held(*ports: int) -> Iterator[None]:
    """Keep these ports taken, as another Setpoint on the host would (a port someone else holds is taken too)."""
    with contextlib.ExitStack() as stack:
        for port in ports:
            s = stack.enter_context(socket.socket())
            with contextlib.suppress(OSError):
                s.bind(("127.0.0.1", port))
                s.listen()
        yield


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fresh folder for the tests that run `setpoint up`, so that its embedded cluster is made only once."""
    return tmp_path_factory.mktemp("clone")


MANIFEST = """
kind: File
name: motd
spec: {{path: "{path}", content: "hello", interval_seconds: 1}}
---
kind: Workload
name: {workload}
spec: {{command: "sleep 3600", replicas: 1}}
"""


def test_up_shows_changes_one_line_each_and_commands_in_its_folder_find_it(clone: Path, unique: str) -> None:
    workload = unique
    target = clone / "motd"
    with held(9808, 9809), up(clone) as (proc, log):
        urls = clone / ".setpoint" / "urls.json"
        assert stat.S_IMODE(urls.stat().st_mode) == 0o600

        # A second terminal, same folder, nothing configured: the commands use the servers of `setpoint up`.
        applied = setpoint(clone, "apply", "-f", "-", stdin=MANIFEST.format(path=target, workload=workload))
        assert applied.returncode == 0, applied.stderr
        wait_for(lambda: target.exists() and target.read_text() == "hello", 30, "the file written")
        listed = setpoint(clone, "-v", "get", "files")
        assert listed.returncode == 0 and re.search(r"motd\s+yes", listed.stdout), listed.stdout + listed.stderr
        assert "from the `setpoint up` running in this folder" in listed.stderr, listed.stderr
        assert json.loads(urls.read_text())["database_url"] in listed.stderr

        # Drift healed shows as one line; a no-op reconcile (every second here) shows nothing.
        target.write_text("hot fix")
        wait_for(lambda: log.read_text().count("File/motd changed: write 5 bytes to") >= 2, 30, "the heal shown")
        wait_for(lambda: replicas_of(workload), 30, "the replica started")
        assert (clone / ".setpoint" / "state" / "workloads" / workload).is_dir(), "state in the data folder"
        shown = log.read_text()
        assert re.search(rf"\d\d:\d\d:\d\d File/motd changed: write 5 bytes to {target}\n", shown), shown
        assert "Task setpoint.reconcile[" not in shown and "succeeded in" not in shown, shown
        # Metrics on free ports, said where; another Setpoint's ports (9808, 9809) are no error.
        ports = re.search(r"metrics: worker http://127.0.0.1:(\d+)/metrics, scheduler http://127.0.0.1:(\d+)/", shown)
        assert ports and {ports[1], ports[2]}.isdisjoint({"9808", "9809"}), shown
        assert "metrics not served" not in shown and "ERROR" not in shown, shown

        said = ctrl_c(proc, log)
        pids = [str(p.pid) for p in replicas_of(workload)]
        assert pids, "workload replicas are detached: Ctrl-C leaves them running"
        assert f"{workload}: pid {pids[0]}" in said and f"kill -- -{pids[0]}" in said, said
        assert not urls.exists(), "a clean stop removes the URL file"


def test_up_verbose_shows_every_task(clone: Path) -> None:
    target = clone / "verbose"
    with up(clone, "-v") as (proc, log):
        applied = setpoint(clone, "apply", "-f", "-", stdin=MANIFEST.split("---")[0].format(path=target))
        assert applied.returncode == 0, applied.stderr
        wait_for(lambda: re.search(r"Task setpoint.reconcile\[\S+\] succeeded", log.read_text()), 30, "task lines")
        ctrl_c(proc, log)


def test_a_stale_url_file_is_named_in_the_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / ".setpoint").mkdir()
    stale = tmp_path / ".setpoint" / "urls.json"
    url = f"postgresql://postgres@127.0.0.1:{port}/setpoint"
    stale.write_text(json.dumps({"database_url": url, "broker_url": f"redis://127.0.0.1:{port}/0", "pid": 1}))
    stale.chmod(0o600)
    done = setpoint(tmp_path, "get", "files")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"port {port} failed" in done.stderr and str(stale) in done.stderr, done.stderr
    assert "no longer answer" in done.stderr, done.stderr


def test_the_error_and_the_verbose_line_say_where_the_url_came_from(tmp_path: Path) -> None:
    env_url = "postgresql://postgres@127.0.0.1:1/setpoint"
    done = subprocess.run(
        [sys.executable, "-m", "setpoint.cli", "get", "files"],
        cwd=tmp_path,
        env={**bare_env(), "SETPOINT_DATABASE_URL": env_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "SETPOINT_DATABASE_URL in the environment" in done.stderr, done.stderr
    done = setpoint(tmp_path, "-v", "get", "files")
    assert "using database postgresql://postgres@127.0.0.1:5432/setpoint, from the default" in done.stderr


def test_a_taken_metrics_port_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with caplog.at_level(logging.INFO, logger="setpoint.metrics"):
            assert metrics.serve(CollectorRegistry(), s.getsockname()[1], "127.0.0.1", "worker") is None
    (record,) = [r for r in caplog.records if r.getMessage() == "metrics not served"]
    assert record.levelno == logging.WARNING


def test_the_environment_wins_over_a_running_setpoint_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in [k for k in os.environ if k.startswith("SETPOINT_")]:
        monkeypatch.delenv(variable)
    monkeypatch.chdir(tmp_path)
    with socket.socket() as live:  # where the running `setpoint up`'s database answers
        live.bind(("127.0.0.1", 0))
        live.listen()
        url = f"postgresql://postgres@127.0.0.1:{live.getsockname()[1]}/setpoint"
        (tmp_path / ".setpoint").mkdir()
        (tmp_path / ".setpoint" / "urls.json").write_text(
            json.dumps({"database_url": url, "broker_url": "redis://127.0.0.1:1/0", "pid": os.getpid()})
        )
        found = Settings()
        assert (found.database_url, found.data_dir) == (url, str(tmp_path / ".setpoint"))
        assert found.database_url_origin.startswith("the `setpoint up` running in this folder")
        monkeypatch.setenv("SETPOINT_DATABASE_URL", "postgresql://postgres@db.example/setpoint")
        monkeypatch.setenv("SETPOINT_BROKER_URL", "redis://broker.example/0")
        given = Settings()
    assert given.database_url == "postgresql://postgres@db.example/setpoint"
    assert given.database_url_origin == "SETPOINT_DATABASE_URL in the environment"
