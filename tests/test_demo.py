"""`setpoint demo` tells its story to the end on the embedded default, and draws the chart of drift."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, replicas_of


def test_demo_runs_to_the_end_with_nothing_configured(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETPOINT_")}
    env.update(SETPOINT_DATA_DIR=str(tmp_path / "data"), COLUMNS="200")
    chart = tmp_path / "drift.png"
    done = subprocess.run(
        [sys.executable, "-m", "setpoint.cli", "demo", "--chart", str(chart)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    story = done.stdout + done.stderr
    assert done.returncode == 0, story
    for step in (
        "web is up",
        "api is up",
        "batch is up",
        "left on the old version",
        "fixes the config by hand",
        "powered off",
        "struck by lightning",
        "order returns",
        "matches its desired state again",
    ):
        assert step in story, f"the story lacks {step!r}:\n{story}"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
    assert not any(replicas_of(f"demo-{server}") for server in ("web", "api", "batch")), "the demo cleans up"
