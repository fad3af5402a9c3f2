"""`setpoint up`: one command runs everything in the foreground, and Ctrl-C stops it all cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.conftest import ROOT, wait_for


def setpoint(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "setpoint.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def children_of(pid: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()


def exercise(proc: subprocess.Popen[bytes], log: Path, tmp_path: Path) -> None:
    """Wait until up is running, make a file through SQL, then Ctrl-C and check everything stopped."""
    try:
        _exercise(proc, log, tmp_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _exercise(proc: subprocess.Popen[bytes], log: Path, tmp_path: Path) -> None:
    running = wait_for(
        lambda: re.search(r"psql (\S+)`", log.read_text()) or proc.poll() is not None,
        120,
        "setpoint up running",
    )
    assert proc.poll() is None, log.read_text()
    assert isinstance(running, re.Match)
    target = tmp_path / "hello"
    with psycopg.connect(running.group(1), autocommit=True) as conn:
        conn.execute("INSERT INTO files (name, path, content) VALUES ('hello', %s, 'world')", (str(target),))
    wait_for(lambda: target.exists() and target.read_text() == "world", 30, "file written")
    assert len(children_of(proc.pid)) >= 2
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    assert proc.wait(60) == 0, log.read_text()
    assert "stopped" in log.read_text()


def test_up_runs_on_configured_servers_and_stops_on_ctrl_c(fresh: dict, tmp_path: Path) -> None:
    env = {**fresh, "SETPOINT_CONTROLLERS": ""}
    log = tmp_path / "up.log"
    exercise(setpoint(["up"], env, log), log, tmp_path)


def test_up_with_nothing_configured_starts_embedded_servers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETPOINT_")}
    env["SETPOINT_DATA_DIR"] = str(tmp_path / "data")
    log = tmp_path / "up.log"
    exercise(setpoint(["up"], env, log), log, tmp_path)
    assert "embedded PostgreSQL" in log.read_text()


def test_half_configured_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETPOINT_")}
    env["SETPOINT_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    done = subprocess.run(
        [sys.executable, "-m", "setpoint.cli", "up"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "SETPOINT_BROKER_URL" in done.stderr and "Traceback" not in done.stderr
