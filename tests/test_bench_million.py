"""The million-resource benchmark's own parts: its resources' names at seven digits, and its verdict on the targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench import million, noop, resources


def test_resources_past_999999_keep_their_whole_number_as_python_names_them(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin() as transaction:  # the kind's table goes with the rollback
        noop.create_table(conn)
        conn.exec_driver_sql(resources.INSERT_RANGE, {"interval_s": 3600, "first": 999_999, "last": 1_000_001})
        names = conn.execute(text(f"SELECT name FROM {resources.TABLE} ORDER BY name")).scalars().all()
        indexes = conn.execute(text(f"SELECT {resources.INDEX_SQL} FROM {resources.TABLE} ORDER BY 1")).scalars()
        transaction.rollback()
    assert names == [resources.name(i) for i in (1_000_000, 1_000_001, 999_999)]
    assert list(indexes) == [999_999, 1_000_000, 1_000_001]


def _span(cpu: float, p99_s: float) -> dict[str, Any]:
    return {
        "scheduler_cpu": cpu, "database_cpu": 0.01, "peak_rss_mb": 100.0, "lateness_p50_s": 0.3,
        "lateness_p99_s": p99_s, "lateness_max_s": p99_s, "expected": 100, "missed": 0, "unfinished_at_end": 0,
    }  # fmt: skip


def test_the_report_says_which_target_each_span_missed(tmp_path: Path) -> None:
    keys = ("database", "statuses_table", "statuses_indexes", "changes_with_indexes", "desired_with_indexes")
    size = dict.fromkeys(keys, 2**20)
    measured = {
        "mode": "full", "cores": 2, "load_average_before": [0.1, 0.1, 0.1], "load_average_after": [1.0, 0.5, 0.2],
        "prepare_s": 160.0, "sizes_prepared": size, "sizes_after": size,
        "scheduler": {
            "resources": 1_000_000, "interval_s": 3600.0, "measured_s": 120.0, "cpu_ratio": 1.5,
            "none": _span(0.2, 0.6), "three": _span(0.6, 1.2),
        },
    }  # fmt: skip
    million.write(measured, tmp_path)
    rows = {line.split(" | ")[0]: line for line in (tmp_path / "million.md").read_text().splitlines()}
    assert rows["| none"].endswith("CPU met, lateness met |")
    assert rows["| three"].endswith("CPU MISSED, lateness MISSED |")
    assert (tmp_path / "million.json").exists()
