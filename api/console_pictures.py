"""The console's two pictures as shapes for its templates to draw in inline SVG: a resource's reconciles on a time
line, and the fleet's resources not ready over the last hour. Positions are computed here; colours are the CSS's."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from api.console_data import Chart

WIDTH = 640
TIMELINE_HEIGHT = 40
CHART_HEIGHT = 90
OUTCOME_CLASSES = {"changed": "changed", "failed": "failed", "invalid": "failed", "noop": "noop"}
"""Outcomes drawn in their own colour; the others (paused, waiting, deleted) share one."""


@dataclasses.dataclass(frozen=True)
class Mark:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


def timeline(runs: list[dict[str, Any]], now: datetime) -> list[Mark]:
    """One mark per run, placed by its start between the oldest run shown and now (newest at the right)."""
    if not runs:
        return []
    oldest = min(run["started_at"] for run in runs)
    span = max((now - oldest).total_seconds(), 1.0)
    marks = []
    for run in runs:
        x = (run["started_at"] - oldest).total_seconds() / span * (WIDTH - 8)
        outcome = run["outcome"]
        tall = outcome in ("changed", "failed", "invalid")
        said = "; ".join(run["actions"]) or run.get("error") or ""
        title = f"{run['started_at'].astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, generation {run['generation']}: {outcome}"
        marks.append(
            Mark(
                round(x, 1),
                4 if tall else 14,
                4,
                TIMELINE_HEIGHT - 8 if tall else TIMELINE_HEIGHT - 28,
                OUTCOME_CLASSES.get(outcome, "other"),
                f"{title}{' - ' + said if said else ''}",
            )
        )
    return marks


def bars(chart: Chart) -> list[Mark]:
    """One bar per minute, scaled so that the hour's peak fills the height."""
    top = max(chart.peak, 1)
    step = WIDTH / len(chart.points)
    marks = []
    for i, (at, count) in enumerate(chart.points):
        height = count / top * (CHART_HEIGHT - 4)
        marks.append(
            Mark(
                round(i * step, 1),
                round(CHART_HEIGHT - height, 1),
                round(max(step - 1, 1), 1),
                round(height, 1),
                "notready",
                f"{at.astimezone(UTC):%H:%M} UTC: {count} not ready",
            )
        )
    return marks
