"""Policies with the real processes: one scheduler and two workers (prefork, two processes each), so that four
reconciles could run at once and only the claim keeps a scope's limit."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text

from models.database import make_engine
from scheduler import policy_usage
from tests.conftest import ROOT, scratch_database, stack_env, start_scheduler, start_worker, wait_for
from tests.helpers import ready_at, sql


@pytest.fixture(scope="module")
def world(servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    admin, broker = servers
    logs = tmp_path_factory.mktemp("policies")
    (logs / "ok").mkdir()
    with scratch_database(admin, "policies_e2e") as url:
        env = stack_env(url, broker, logs / "state", SETPOINT_FILE_ROOTS=str(logs / "ok"))
        engine = make_engine(url)
        scheduler = start_scheduler(env, logs / "scheduler.log")
        workers = [start_worker(env, logs / f"{name}.log", name) for name in ("w1", "w2")]
        try:
            wait_for(lambda: all("ready." in w.output() for w in workers), 60, "both workers ready")
            yield {"env": env, "engine": engine, "dir": logs}
        finally:
            for process in (scheduler, *workers):
                process.stop()
            engine.dispose()


def run_spans(engine: Engine, kind: str, names: list[str]) -> list[tuple[datetime, datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT started_at, finished_at FROM runs WHERE kind = :k AND name = ANY(:n) ORDER BY started_at"),
            {"k": kind, "n": names},
        ).all()
    return [(r.started_at, r.finished_at) for r in rows]


def most_overlapping(spans: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def all_ready(engine: Engine, names: list[str], kind: str, generation: int = 1) -> bool:
    return all(ready_at(engine, n, generation, kind) for n in names)


def test_max_in_flight_holds_across_two_workers_and_never_slows_a_resource_outside(world: dict[str, Any]) -> None:
    engine = world["engine"]
    sql(engine, "INSERT INTO policies (name, kinds, max_in_flight) VALUES ('slow-two', '{Flaky}', 2)")
    slow = [f"slow-{i}" for i in range(6)]
    with engine.begin() as conn:
        for name in slow:  # each reconcile takes a second: six would take 1.5 s on four worker processes
            conn.execute(
                text("INSERT INTO flakies (name, counter_path, hang_seconds) VALUES (:n, :p, 1)"),
                {"n": name, "p": str(world["dir"] / name)},
            )
    free = [f"free-{i}" for i in range(4)]
    sql(engine, "INSERT INTO noops (name) SELECT unnest(CAST(:n AS text[]))", n=free)
    wait_for(lambda: all_ready(engine, free, "Noop"), 10, "the noops, in no policy's scope, ready")
    wait_for(lambda: all_ready(engine, slow, "Flaky"), 30, "the slow ones ready")
    spans = run_spans(engine, "Flaky", slow)
    assert most_overlapping(spans) == 2, spans
    first_slow_done = min(end for _, end in spans)
    assert max(end for _, end in run_spans(engine, "Noop", free)) < first_slow_done, "never waited for the limit"
    sql(engine, "DELETE FROM policies WHERE name = 'slow-two'")


def claims_for(engine: Engine, probe: str, seconds: float) -> int:
    """Watch the scheduler claim for at least `seconds` from now: change a noop in no policy's scope again and again,
    waiting each time until it is ready at its new generation, until a change made `seconds` after the start has been
    reconciled. Each generation is a claim made after every change committed before this was called; returns how many
    (at least three). The claims are the synchronisation; `seconds` is how long a limit must hold."""
    from functools import partial

    started = changed = time.monotonic()
    sql(engine, "INSERT INTO noops (name) VALUES (:n)", n=probe)
    generation = 1
    wait_for(partial(ready_at, engine, probe, generation, "Noop"), 10, f"{probe} ready")
    while generation < 3 or changed - started < seconds:
        changed, generation = time.monotonic(), generation + 1
        sql(engine, "UPDATE noops SET note = CAST(:g AS text) WHERE name = :n", g=str(generation), n=probe)
        wait_for(partial(ready_at, engine, probe, generation, "Noop"), 10, f"{probe} ready at generation {generation}")
    return generation


def test_max_per_minute_spreads_the_starts_and_an_edit_or_delete_takes_effect_within_a_tick(
    world: dict[str, Any],
) -> None:
    engine = world["engine"]
    # 120 a minute with the default burst (one second's worth: 2): ten starts take about four seconds, not one tick.
    sql(engine, """INSERT INTO policies (name, selector, max_per_minute) VALUES ('paced', '{"pace": "on"}', 120)""")
    paced = [f"paced-{i}" for i in range(10)]
    sql(engine, """INSERT INTO noops (name, labels) SELECT unnest(CAST(:n AS text[])), '{"pace": "on"}'""", n=paced)
    wait_for(lambda: all_ready(engine, paced, "Noop"), 20, "the paced noops ready")
    starts = [start for start, _ in run_spans(engine, "Noop", paced)]
    for i, start in enumerate(starts):  # a token bucket: at most burst + rate * elapsed starts so far
        assert (start - starts[0]).total_seconds() >= (i - 1) / 2 - 0.3, (i, starts)
    assert (starts[-1] - starts[0]).total_seconds() < 7, starts
    # An edit: one a minute now, and the bucket spent. Of five more changes, none starts within the minute.
    sql(engine, "UPDATE policies SET max_per_minute = 1 WHERE name = 'paced'")
    sql(engine, "UPDATE policy_statuses SET tokens = 0, refilled_at = now() WHERE name = 'paced'")  # spent
    sql(engine, "UPDATE noops SET note = 'again' WHERE name = ANY(:n)", n=paced[:5])
    # At least three claims over 1.5 s, each of which found the five due: 120 a minute would have started three.
    claims = claims_for(engine, "unpaced", 1.5)
    started = [n for n in paced[:5] if (sql_status(engine, n) or {}).get("claimed_generation") != 1]
    assert started == [], f"started in {claims} claims after the edit"
    assert sum(bool(ready_at(engine, n, 2, "Noop")) for n in paced[:5]) == 0
    sql(engine, "DELETE FROM policies WHERE name = 'paced'")
    deleted_at = time.monotonic()
    wait_for(lambda: all(ready_at(engine, n, 2, "Noop") for n in paced[:5]), 5, "all five once the policy is gone")
    assert time.monotonic() - deleted_at < 3


def setpoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "setpoint.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_a_bad_rollout_halts_after_the_first_failure_and_a_fix_and_resume_finish_it(world: dict[str, Any]) -> None:
    engine, ok = world["engine"], world["dir"] / "ok"
    names = [f"web-{i}" for i in range(10)]
    with engine.begin() as conn:
        for name in names:
            conn.execute(
                text("INSERT INTO files (name, path, content) VALUES (:n, :p, 'v1')"), {"n": name, "p": str(ok / name)}
            )
    wait_for(lambda: all_ready(engine, names, "File"), 20, "ten files at v1")
    sql(engine, "INSERT INTO policies (name, kinds, max_unready, max_failures) VALUES ('careful', '{File}', 2, 1)")
    # The bad change: a path outside SETPOINT_FILE_ROOTS, invalid for every file.
    sql(engine, "UPDATE files SET path = '/srv/elsewhere/' || name, content = 'v2'")
    halted = wait_for(
        lambda: next((p for p in usage(engine) if p.halted and p.held == 8), None),
        20,
        "the rollout halted, eight files held",
    )
    assert halted is not None and halted.failures >= 1
    with engine.connect() as conn:
        started = conn.execute(text("SELECT count(*) FROM runs WHERE kind = 'File' AND generation = 2")).scalar()
    assert started is not None and 1 <= started
    tried = {n for n in names if (sql_status(engine, n) or {}).get("claimed_generation") == 2}
    assert len(tried) <= 2, "at most max_unready resources ever started the bad change"
    held = next(n for n in names if n not in tried)
    described = setpoint(world["env"], "describe", "File", held).stdout
    assert "Held=True RolloutHalted: policy careful halted the rollout" in described
    assert "setpoint rollout resume careful" in described
    listed = setpoint(world["env"], "get", "policies").stdout
    assert "careful" in listed and "halted" in listed
    assert all((ok / n).read_text() == "v1" for n in names), "the real files are untouched"
    # The fix, pushed to all ten, and the rollout resumed.
    sql(engine, "UPDATE files SET path = :ok || '/' || name, content = 'v3'", ok=str(ok))
    resumed = setpoint(world["env"], "rollout", "resume", "careful")
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: all_ready(engine, names, "File", 3), 30, "all ten at the fixed generation")
    assert all((ok / n).read_text() == "v3" for n in names)
    sql(engine, "DELETE FROM policies WHERE name = 'careful'")
    unknown = setpoint(world["env"], "rollout", "resume", "nope")
    assert unknown.returncode == 1 and "no policy named 'nope'" in unknown.stderr
    assert setpoint(world["env"], "get", "policies", "-o", "yaml").returncode == 2


def usage(engine: Engine) -> list[policy_usage.Usage]:
    with engine.connect() as conn:
        return policy_usage.usage(conn)


def sql_status(engine: Engine, name: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM statuses WHERE name = :n"), {"n": name}).mappings().first()
    return dict(row) if row else None
