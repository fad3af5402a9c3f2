"""The scheduler at a million resources (issue 16): one scheduler holding 1,000,000 rows due once an hour, about
278 enqueues a second, without and with three policies, as bench/policies.py measures it at 100,000.

Argo CD publishes 50,000 applications across 10 controller shards; one Setpoint scheduler should hold twenty times
that in under half a core, each message sent within a second of its due time (p99). bench/drain.py takes the
messages and completes each, so the fleet behaves as one whose workers keep up. Reported besides: the database's
size, how long the rows took to go in through the triggers, and the load average around the run (the machine may
be shared: the reader judges the noise).

`python -m bench --only million [--quick]` writes bench/results/million.md and million.json (quick: 100,000 rows on
a 360 s interval, the same rate).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import policies, resources, scale, servers
from models.database import libpq_url

CPU_TARGET = 0.5
"""Of one core, for the scheduler process."""
LATENESS_P99_TARGET_S = 1.0


@dataclasses.dataclass(frozen=True)
class MillionPlan:
    mode: str
    resources: int
    interval_s: float
    measure_s: float
    """Each of the two spans measured (without policies, then with three)."""


QUICK = MillionPlan("quick", 100_000, 360.0, 30.0)
FULL = MillionPlan("full", 1_000_000, 3600.0, 120.0)

_SIZES = """SELECT pg_database_size(current_database()),
       pg_relation_size('statuses'), pg_indexes_size('statuses'),
       pg_total_relation_size('changes'), pg_total_relation_size(%s)"""


def sizes(url: str, table: str) -> dict[str, int]:
    """Bytes on disk: the database, the statuses table and its indexes, desired-state history, the kind's table."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        row = conn.execute(_SIZES, (table,)).fetchone()
    assert row is not None
    database, statuses, indexes, changes, desired = row
    return {
        "database": database,
        "statuses_table": statuses,
        "statuses_indexes": indexes,
        "changes_with_indexes": changes,
        "desired_with_indexes": desired,
    }


def load_average() -> list[float]:
    """What `uptime` shows: runnable processes averaged over 1, 5 and 15 minutes (the machine's cores: 2)."""
    return [round(x, 2) for x in os.getloadavg()]


def run(plan: MillionPlan, stack: contextlib.ExitStack, say: Callable[[str], None], results: Path) -> dict[str, Any]:
    measured: dict[str, Any] = {"mode": plan.mode, "cores": os.cpu_count(), "load_average_before": load_average()}
    tag = f"bench-mil-{int(time.time())}"
    logs = results / "logs" / "million"
    (logs / "state").mkdir(parents=True, exist_ok=True)
    found, dbs = servers.for_run(stack, tag)
    say(f"million: {plan.mode} run, preparing {plan.resources:,} resources on a {plan.interval_s:g} s interval")
    started = time.monotonic()
    url = scale.prepare(dbs, plan.resources, plan.interval_s, say)
    measured["prepare_s"] = time.monotonic() - started
    measured["sizes_prepared"] = sizes(url, resources.TABLE)
    say(f"million: prepared in {measured['prepare_s']:.0f} s")
    setup = scale.Setup(found.broker_url, tag, plan.interval_s, plan.measure_s, logs)
    measured["scheduler"] = policies.scheduler_cpu(url, plan.resources, setup, say)
    measured["sizes_after"] = sizes(url, resources.TABLE)
    dbs.drop(url)
    measured["load_average_after"] = load_average()
    write(measured, results)
    return measured


def write(measured: dict[str, Any], results: Path) -> None:
    (results / "million.json").write_text(json.dumps(measured, indent=2) + "\n")
    s, prepared, after = measured["scheduler"], measured["sizes_prepared"], measured["sizes_after"]
    mb = lambda b: f"{b / 2**20:,.0f} MB"  # noqa: E731
    pct = lambda x: f"{100 * x:.1f}%" if x is not None else "n/a"  # noqa: E731

    def verdict(label: str) -> str:
        m = s[label]
        cpu_ok, late_ok = m["scheduler_cpu"] < CPU_TARGET, m["lateness_p99_s"] < LATENESS_P99_TARGET_S
        return f"CPU {'met' if cpu_ok else 'MISSED'}, lateness {'met' if late_ok else 'MISSED'}"

    rate = s["resources"] / s["interval_s"]
    lines = [
        f"# The scheduler at {s['resources']:,} resources ({measured['mode']} run)",
        "",
        f"{s['resources']:,} resources on a {s['interval_s']:g} s interval ({rate:.0f} enqueues/s), "
        f"{s['measured_s']:g} s measured each way; a drain completes every message. Targets: scheduler CPU under "
        f"{CPU_TARGET:g} core, lateness p99 under {LATENESS_P99_TARGET_S:g} s.",
        "",
        "| policies | scheduler CPU (of a core) | its database sessions' CPU | peak RSS | lateness p50 | "
        "lateness p99 | lateness max | missed | unfinished at end | targets |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {label} | {pct(s[label]['scheduler_cpu'])} | {pct(s[label]['database_cpu'])} | "
            f"{s[label]['peak_rss_mb']:.0f} MB | {s[label]['lateness_p50_s']:.3f} s | "
            f"{s[label]['lateness_p99_s']:.3f} s | {s[label]['lateness_max_s']:.3f} s | "
            f"{s[label]['missed']} of {s[label]['expected']} | {s[label]['unfinished_at_end']} | {verdict(label)} |"
            for label in ("none", "three")
        ),
        "",
        f"Scheduler CPU with three policies: {s['cpu_ratio']:.2f}x without.",
        "",
        f"Prepared in {measured['prepare_s']:.0f} s (every row through the triggers, then one VACUUM ANALYZE).",
        "",
        "| on disk | prepared | after both spans |",
        "|---|---|---|",
        f"| database (pg_database_size) | {mb(prepared['database'])} | {mb(after['database'])} |",
        *(
            f"| {what} | {mb(prepared[key])} | {mb(after[key])} |"
            for what, key in (
                ("statuses table", "statuses_table"),
                ("statuses indexes", "statuses_indexes"),
                ("changes (desired-state history), with indexes", "changes_with_indexes"),
                ("the kind's table, with indexes", "desired_with_indexes"),
            )
        ),
        "",
        f"Load average (1, 5, 15 min) on {measured['cores']} cores: {measured['load_average_before']} before, "
        f"{measured['load_average_after']} after.",
    ]
    (results / "million.md").write_text("\n".join(lines) + "\n")
