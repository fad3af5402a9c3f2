"""`setpoint demo` tells its story to the end on the embedded default, and draws the chart of drift."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from setpoint import demo
from tests.conftest import ROOT, replicas_of


def test_demo_runs_to_the_end_with_nothing_configured(tmp_path: Path) -> None:
    """As the quick start says: from the folder one is in, no setting at all (so a relative data folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETPOINT_")}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="200")
    done = subprocess.run(
        [sys.executable, "-m", "setpoint.cli", "demo"],
        cwd=tmp_path,
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
    assert f"config written to {tmp_path}/.setpoint/demo/app.conf" in story, story
    chart = tmp_path / "setpoint-demo.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
    assert not any(replicas_of(f"demo-{server}") for server in ("web", "api", "batch")), "the demo cleans up"


def test_chart_counts_whole_resources_and_its_labels_stay_clear_of_the_line() -> None:
    events = ["api left on v1", "config hand-edited", "batch powered off", "web struck by lightning"]
    drift = [0] * 50 + [1] * 10 + [2] * 10 + [3] * 10 + [4] * 20 + [2] * 5 + [0] * 20
    story = SimpleNamespace(
        samples=[(i * 0.2, d) for i, d in enumerate(drift)],
        events=[demo.Event(10.0 + 2.0 * i, label) for i, label in enumerate(events)],
        phases=[(0.0, "running"), (9.0, "stopped"), (19.0, "running")],
    )
    figure = demo.chart_of(story)
    (axes,) = figure.axes
    assert all(float(tick).is_integer() for tick in axes.get_yticks()), axes.get_yticks()
    renderer = figure.canvas.get_renderer()
    labels = [t.get_window_extent(renderer) for t in axes.texts]
    assert len(labels) == len(events)
    top_of_line = axes.transData.transform((0, max(drift)))[1]
    assert all(box.y0 > top_of_line for box in labels), "a label overlaps the line"
    for i, box in enumerate(labels):
        assert not any(box.overlaps(other) for other in labels[i + 1 :]), "labels overlap each other"
