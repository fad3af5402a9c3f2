"""`python -m bench [--quick]`: measure Setpoint and its naive peers side by side on real servers and processes,
write bench/results/ (results.md, results.png, results.json) and print the headline ratios last.

Every process it starts is stopped, and every database and queue it makes is removed, however the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg
from sqlalchemy.engine import make_url

from bench import (
    bare,
    bare_chain,
    changes,
    console,
    dependencies,
    events,
    healing,
    hold,
    processes,
    reaction,
    report,
    resources,
    roundtrips,
    scale,
    servers,
    throughput,
    webhooks,
)
from bench.results_model import Results
from bench.stats import Latency
from bench.wire import CountingProxy
from models.database import libpq_url
from setpoint.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class Plan:
    mode: str
    resources: int
    """No-op resources in the stack's database, all reconciled at once for throughput."""
    reaction_samples: int
    naive_period_s: float
    """The period of the real naive loop (short, so that it is measured in seconds, not minutes)."""
    naive_samples: int
    roundtrip_samples: int
    scale: tuple[int, ...]
    """Resources held by the scheduler in each scale scenario."""
    scale_measure_s: float
    throughput_rounds: int
    """Setpoint and the bare task are measured this many times each, alternately (S, C, S, C, …); the medians
    are compared, and the range of each is reported."""
    heal: healing.HealPlan
    chains: int = 10
    """Chains of dependencies.CHAIN_LENGTH fixed once each (issue 13)."""
    trees: int = 1
    """Rounds of a 1,000-resource tree and the same without dependencies, alternately."""
    scale_interval_s: float = 300.0
    hold_resources: int = 10_000
    hold_interval_s: float = 60.0
    hold_s: float = 600.0
    """How long the load is held (0: not at all)."""
    event_changes: int = 200
    """Status changes timed from commit to their event on an SSE stream (issue 15)."""


QUICK_HEAL = healing.HealPlan(
    files=200,
    poll_files=100,
    poll_interval_s=3,
    workloads=30,
    kill_rounds=1,
    supervised=20,
    idle_files=1_800,
    idle_window_s=10.0,
)
FULL_HEAL = healing.HealPlan(
    files=200,
    poll_files=100,
    poll_interval_s=3,
    workloads=40,
    kill_rounds=3,
    supervised=60,
    idle_files=9_800,
    idle_window_s=60.0,
)
"""Watched Files: `files` tampered with plus `idle_files` never touched (2,000 and 10,000 in all)."""
QUICK = Plan("quick", 600, 40, 1.0, 20, 100, (10_000,), 8.0, 5, QUICK_HEAL, hold_s=0, event_changes=100)
FULL = Plan("full", 5_000, 300, 1.0, 40, 500, (10_000, 100_000), 30.0, 5, FULL_HEAL, chains=30, trees=3)
ROUNDTRIP_WARMUP = 20
REACTION_WARMUP = 3
"""Changes sent through each reaction chain before any is counted: the bare chain's processes connect lazily."""
NAIVE_RESOURCES = 10
STACK_INTERVAL_S = 3600
"""The stack's resources are due only when the benchmark says so: the stack is idle between measurements."""

_started = time.monotonic()


def say(what: str) -> None:
    print(f"[{time.monotonic() - _started:6.1f}s] {what}", file=sys.stderr, flush=True)


def machine(load_at_start: float) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "?")
    memory = psutil.virtual_memory().total / 2**30
    system = f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GB, {platform.system()} {platform.release()}"
    return f"{system}; load average {load_at_start:.1f} at start, {os.getloadavg()[0]:.1f} at end"


def _cpuinfo() -> list[str]:
    with contextlib.suppress(OSError):
        return Path("/proc/cpuinfo").read_text().splitlines()
    return []


def wait_converged(database_url: str, timeout_s: float) -> None:
    query = """SELECT count(*) FROM statuses
               WHERE kind = %s AND (observed_generation IS DISTINCT FROM generation OR NOT ready)"""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        while (row := conn.execute(query, (resources.KIND,)).fetchone()) and row[0]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{row[0]} resources still not converged after {timeout_s}s")
            time.sleep(0.2)


def run(plan: Plan, stack: contextlib.ExitStack, notes: list[str]) -> Results:
    load_at_start = os.getloadavg()[0]
    date = datetime.now(UTC).isoformat(timespec="seconds")
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    logs = RESULTS / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    (logs / "state").mkdir(parents=True)
    found, dbs = servers.for_run(stack, tag)
    url = dbs.clone("stack")
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(resources.INSERT, {"interval_s": STACK_INTERVAL_S, "count": plan.resources})  # type: ignore[arg-type]
    names = [resources.name(i) for i in range(1, plan.resources + 1)]
    bare_chain.create(url, names)
    say(f"databases ready on {'embedded' if found.embedded else 'local'} servers ({tag})")

    admin = make_url(found.admin_url)
    proxy = stack.enter_context(CountingProxy(admin.host or "127.0.0.1", admin.port or 5432))
    queues = {role: f"{tag}-{role}" for role in ("main", "bare", "roundtrips")}

    def start(child: processes.Child) -> processes.Child:
        stack.callback(child.stop)
        return child

    def env(role: str, database_url: str = url, **extra: str) -> dict[str, str]:
        return processes.environment(database_url, found.broker_url, queues[role], logs / "state", **extra)

    workers = [
        start(processes.worker(env("main"), logs, "worker")),
        start(processes.worker(env("bare"), logs, "bare-worker", app="bench.bare_worker")),
        start(
            processes.worker(
                env("roundtrips", roundtrips.proxied(url, proxy), SETPOINT_WORKER_NAME=roundtrips.WORKER_NAME),
                logs,
                "roundtrips-worker",
            )
        ),
    ]
    scale_urls = {count: scale.prepare(dbs, count, plan.scale_interval_s) for count in plan.scale}
    for child in workers:
        child.wait_for(processes.WORKER_READY)
    say("workers ready, scale databases filled")
    sender = bare.make_app(Settings(broker_url=found.broker_url, queue=queues["main"], database_url=url))

    # The naive peer first, while Setpoint's scheduler is not running: nothing but the loop sends reconciles.
    naive_names = names[:NAIVE_RESOURCES]
    with reaction.PeriodicLoop(sender, queues["main"], naive_names, plan.naive_period_s) as loop:
        time.sleep(plan.naive_period_s)
        pause = loop.phases(plan.naive_samples)
        [naive] = reaction.measure(url, [reaction.SETPOINT], naive_names, plan.naive_samples, pause)
    say(f"naive loop reaction measured at a {plan.naive_period_s:g} s period")

    scheduler = start(processes.scheduler(env("main"), logs))
    scheduler.wait_for(processes.SCHEDULER_LEADING)
    wait_converged(url, 60 + plan.resources / 50)
    say(f"{plan.resources:,} resources converged")
    listener = start(processes.Child("bare-listener", [sys.executable, "-m", "bench.bare_chain"], env("bare"), logs))
    listener.wait_for(bare_chain.LISTENING)
    chains = [reaction.SETPOINT, reaction.BARE]
    pause = reaction.random_pause(0.01, 0.05)
    reacted, bare_reacted = reaction.measure(url, chains, names, plan.reaction_samples, pause, REACTION_WARMUP)
    listener.stop()
    say("reaction and the bare-chain ceiling measured, change by change alternately")
    main_worker, bare_worker = workers[0], workers[1]
    ours_watched = {
        "worker": processes.family(main_worker.pid),
        "scheduler": [scheduler.pid],
        "benchmark": [os.getpid()],
    }
    bare_watched = {"worker": processes.family(bare_worker.pid), "benchmark": [os.getpid()]}
    timeout_s = 60 + plan.resources / 20
    ours, ceiling = [], []
    for i in range(plan.throughput_rounds):  # interleaved, so that a busy spell of the machine hits both
        ours.append(throughput.setpoint(url, ours_watched, timeout_s))
        ceiling.append(throughput.ceiling(url, sender, queues["bare"], names, bare_watched, timeout_s))
        say(f"round {i + 1}: Setpoint {ours[-1].steady_per_s:.0f}/s, bare task {ceiling[-1].steady_per_s:.0f}/s")
    say(f"throughput and the bare-task ceiling measured ({plan.throughput_rounds} rounds each)")
    counted = names[: ROUNDTRIP_WARMUP + plan.roundtrip_samples]
    trips = roundtrips.measure(url, proxy, sender, queues["roundtrips"], counted, ROUNDTRIP_WARMUP)
    bare_trips = roundtrips.measure_bare(url, proxy, counted, ROUNDTRIP_WARMUP)
    say("round trips counted")
    processes.stop_all([scheduler, *workers])  # the hold and the scale scenarios run on an otherwise quiet machine
    dbs.drop(url)

    measured = events.run(dbs.clone("events"), logs, plan.event_changes)
    notes.extend(events.lines(measured))
    say("events: " + "; ".join(notes))

    say("healing: watching, polling alone and supervisord, on a stack of their own")
    healed = healing.measure(dbs, found.broker_url, tag, logs, plan.heal, say)
    say(f"dependencies: {plan.chains} chains of {dependencies.CHAIN_LENGTH}, {plan.trees} tree(s) against flat sets")
    linked = dependencies.run(dbs, found.broker_url, tag, logs, plan.chains, plan.trees)
    say("changes: UPDATE throughput of desired rows with and without the history trigger")
    trigger_cost = changes.run(dbs, say=say)
    (RESULTS / "changes.json").write_text(json.dumps(dataclasses.asdict(trigger_cost), indent=2) + "\n")
    for line in trigger_cost.headlines():
        say(line)
    say("console: page load times with 10,000 resources")
    page_times = console.run(dbs, samples=50 if plan.mode == "quick" else 100, say=say)
    (RESULTS / "console.json").write_text(json.dumps(dataclasses.asdict(page_times), indent=2) + "\n")
    notes.extend(page_times.headlines())

    held = None
    if plan.hold_s > 0:
        say(f"holding {plan.hold_resources:,} resources at {plan.hold_interval_s:g} s for {plan.hold_s:g} s")
        held = hold.run(dbs, found.broker_url, tag, plan.hold_resources, plan.hold_interval_s, plan.hold_s, logs)
        say("load held")

    setup = scale.Setup(found.broker_url, tag, plan.scale_interval_s, plan.scale_measure_s, logs)
    loads = []
    for count in plan.scale:
        loads.append(scale.setpoint(scale_urls[count], count, setup))
        say(f"Setpoint's scheduler measured at {count:,} resources")
        loads.append(scale.apscheduler(count, setup))
        say(f"APScheduler measured at {count:,} jobs")
    return Results(
        mode=plan.mode,
        date=date,
        machine=machine(load_at_start),
        servers="embedded PostgreSQL and Redis" if found.embedded else "local PostgreSQL and Redis",
        stack_resources=plan.resources,
        reaction=Latency.of(reacted),
        reaction_ceiling=Latency.of(bare_reacted),
        naive_loop=Latency.of(naive),
        naive_loop_period_s=plan.naive_period_s,
        throughput_rounds=ours,
        ceiling_rounds=ceiling,
        round_trips=trips,
        bare_round_trips=bare_trips,
        scale=loads,
        hold=held,
        duration_s=time.monotonic() - _started,
        healing=healed,
        dependencies=linked,
    )


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _policies(quick: bool) -> int:
    from bench import policies

    with contextlib.ExitStack() as stack:
        policies.run(policies.QUICK if quick else policies.FULL, stack, say, RESULTS)
    print((RESULTS / "policies.md").read_text())
    return 0


def _million(quick: bool) -> int:
    from bench import million

    with contextlib.ExitStack() as stack:
        million.run(million.QUICK if quick else million.FULL, stack, say, RESULTS)
    print((RESULTS / "million.md").read_text())
    return 0


PARTS: dict[str, Callable[[bool], int | None]] = {
    "changes": lambda quick: changes.main(),
    "console": lambda quick: console.main(),
    "events": lambda quick: events.main(quick),
    "million": lambda quick: _million(quick),
    "policies": lambda quick: _policies(quick),
    "webhooks": lambda quick: (webhooks.measure(quick, RESULTS), 0)[1],
}
"""The parts that run alone, each on servers of its own."""


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a scaled-down run, about three minutes")
    parser.add_argument(
        "--hold", type=float, metavar="SECONDS", help=f"how long to hold the load (full: {FULL.hold_s:g}, quick: 0)"
    )
    parser.add_argument(
        "--only",
        choices=sorted(PARTS),
        help="measure this part alone, as `python -m bench.PART` does (webhooks: with --quick, a smaller run); "
        "options it does not know go to the part (`--only events --rollout-rows 2000`)",
    )
    args, rest = parser.parse_known_args()
    signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: everything started is stopped
    if rest and not args.only:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.only:
        sys.argv = [sys.argv[0], *rest]
        return PARTS[args.only](args.quick) or 0
    plan = QUICK if args.quick else FULL
    if args.hold is not None:
        plan = dataclasses.replace(plan, hold_s=args.hold)
    try:
        notes: list[str] = []
        with contextlib.ExitStack() as stack:
            results = run(plan, stack, notes)
    except KeyboardInterrupt:
        say("interrupted: every process it started is stopped, its databases and queues removed")
        return 130
    paths = report.write(results, RESULTS)
    print("\n".join(f"wrote {path}" for path in paths))
    print("\n".join([*report.headlines(results), *notes]))
    print("\n".join(webhooks.measure(args.quick, RESULTS)))  # its own servers and scheduler, after the rest
    return 0


if __name__ == "__main__":
    sys.exit(main())
