"""The run's figures as a Markdown table, a PNG chart and the headline ratios, against the targets of issue 6."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench import hold  # noqa: E402
from bench.dependencies import FLUX_RECHECK_S, SLOW_S, Converge, Dependencies  # noqa: E402
from bench.healing import Healing  # noqa: E402
from bench.hold import Hold  # noqa: E402
from bench.results_model import NAIVE_PERIOD_S, Results  # noqa: E402
from bench.scale import SchedulerLoad  # noqa: E402
from bench.stats import Latency, Spread, median  # noqa: E402
from bench.throughput import Rate  # noqa: E402
from setpoint.settings import Settings  # noqa: E402

REACTION_P50_S, REACTION_P99_S = 0.050, 0.250
THROUGHPUT_RATIO = 0.60
SCHEDULER_CPU, SCHEDULER_RSS_MB, SCHEDULER_LATENESS_P99_S = 0.20, 300.0, 1.0
ROUND_TRIPS = 3
HEAL_P50_S, HEAL_P99_S = 0.100, 0.500
REPLACE_P50_S = 0.250
IDLE_CPU = 0.03
"""Issue 12's "a few percent of a core" for an idle worker watching 10,000 files, taken as 3%."""
TICK_S: float = Settings.model_fields["tick_seconds"].default
"""SETPOINT_TICK_SECONDS as the benchmark runs it: the default."""


def write(results: Results, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "results.md", folder / "results.png", folder / "results.json"]
    paths[0].write_text(markdown(results))
    chart(results, paths[1])
    paths[2].write_text(json.dumps(results.to_json(), indent=2, default=str) + "\n")
    return paths


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _scale_rows(setpoint: SchedulerLoad, peer: SchedulerLoad | None) -> list[str]:
    n, minutes = f"{setpoint.resources:,}", setpoint.interval_s / 60
    where = f"scheduler, {n} resources at {minutes:g} min"
    database = f" (+ PostgreSQL {setpoint.database_cpu_share:.1%})" if setpoint.database_cpu_share is not None else ""
    naive = peer.usage if peer else None

    def other(text: str) -> str:
        return f"APScheduler: {text}" if peer else "APScheduler: not run"

    target = setpoint.resources >= 100_000
    return [
        f"| {where}: CPU of one core | {setpoint.usage.cpu_share:.1%}{database} | "
        f"{other(f'{naive.cpu_share:.1%}' if naive else '')} | < 20% at 100k | "
        f"{_met(setpoint.usage.cpu_share < SCHEDULER_CPU) if target else '–'} |",
        f"| {where}: peak RSS | {setpoint.usage.peak_rss_mb:.0f} MB | "
        f"{other(f'{naive.peak_rss_mb:.0f} MB' if naive else '')} | < 300 MB at 100k | "
        f"{_met(setpoint.usage.peak_rss_mb < SCHEDULER_RSS_MB) if target else '–'} |",
        f"| {where}: lateness p50 / p99 / max | {_lateness(setpoint)} | "
        f"{other(_lateness(peer) if peer else '')} | p99 < 1 s at 100k | "
        f"{_met(setpoint.lateness.p99_s < SCHEDULER_LATENESS_P99_S) if target else '–'} |",
        f"| {where}: due but not sent (of expected) | {setpoint.missed:,} of {setpoint.expected:,} | "
        f"{other(f'{peer.missed:,} of {peer.expected:,}' if peer else '')} | 0 | {_met(setpoint.missed == 0)} |",
    ]


def _hold_rows(h: Hold) -> list[str]:
    where = f"load held: {h.resources:,} resources at {h.interval_s:g} s for {h.held_s / 60:.1f} min"
    cpu = ", ".join(f"{label} {usage.cpu_share:.0%}" for label, usage in h.usage.items())
    fewest, most = h.pace
    first, second = h.queue_halves
    return [
        f"| {where}: reconciles per resource (messages sent), min / mean / max | "
        f"{h.rounds_min} / {h.rounds_mean:.2f} / {h.rounds_max}, {h.off_pace:,} outside {fewest}-{most} | – | "
        f"once per interval ± jitter: {fewest}-{most}, mean {h.expected_rounds:.2f} | {_met(h.off_pace == 0)} |",
        f"| {where}: reconciles per second | {h.reconciles_per_s:.1f}/s | – | "
        f"{h.expected_per_s:.1f}/s, -3% to +1% | {_met(-0.03 <= h.reconciles_per_s / h.expected_per_s - 1 <= 0.01)} |",
        f"| {where}: most resources at once overdue by > {hold.SLACK_S:g} s / gone an interval (± jitter) "
        f"+ {hold.SLACK_S:g} s without a reconcile | {h.overdue_max:,} / {h.starved_max:,} | – | 0 / 0 | "
        f"{_met(h.overdue_max == 0 and h.starved_max == 0)} |",
        f"| {where}: queue length, max / mean of first half / mean of second half | {h.queue_max:,} / "
        f"{first:.1f} / {second:.1f} | – | no growth | {_met(_no_growth(h))} |",
        f"| {where}: run history rows, most / at the end (keeping {h.history_kept} no-ops each) | "
        f"{h.history_max:,} / {h.samples[-1].history:,} | – | ≤ {h.history_bound:,} | "
        f"{_met(h.history_max <= h.history_bound)} |",
        f"| {where}: CPU (share of one core) | {cpu} | – | – | – |",
    ]


def _no_growth(h: Hold) -> bool:
    """The second half's queue no longer than the first's, give or take what one tick sends at this load."""
    per_tick = h.resources / h.interval_s * TICK_S
    first, second = h.queue_halves
    return second <= first + per_tick


def _rounds(rates: list[Rate]) -> str:
    return ", ".join(f"{rate.steady_per_s:.0f}/s" for rate in rates)


def _cpu_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _lateness(load: SchedulerLoad) -> str:
    return f"{_ms(load.lateness.p50_s)} / {_ms(load.lateness.p99_s)} / {_ms(load.lateness.max_s)}"


def _range(spread: Spread, fmt: str = "{:.0f}/s") -> str:
    return f"{fmt.format(spread.median)} ({fmt.format(spread.low)}–{fmt.format(spread.high)})"


def markdown(r: Results) -> str:
    rt, ratio, (p50_x, p99_x) = r.round_trips, r.throughput_ratio, r.reaction_ratio
    ours_cpu, bare_cpu = r.cpu_ms_per_task(r.throughput_rounds), r.cpu_ms_per_task(r.ceiling_rounds)
    ours_median = sorted(r.throughput_rounds, key=lambda rate: rate.steady_per_s)[len(r.throughput_rounds) // 2]
    bare_median = sorted(r.ceiling_rounds, key=lambda rate: rate.steady_per_s)[len(r.ceiling_rounds) // 2]
    rounds = r.throughput.count
    lines = [
        f"# Setpoint benchmark ({r.mode}, {r.date})",
        "",
        f"Machine: {r.machine}. Servers: {r.servers}. Run took {r.duration_s:.0f} s.",
        "",
        "| measure | Setpoint | naive peer / ceiling | target | met |",
        "|---|---|---|---|---|",
        f"| reaction p50, idle stack ({r.stack_resources:,} resources) | {_ms(r.reaction.p50_s)} | "
        f"bare chain {_ms(r.reaction_ceiling.p50_s)}: Setpoint takes **{p50_x:.1f}×** as long | ≤ 50 ms | "
        f"{_met(r.reaction.p50_s <= REACTION_P50_S)} |",
        f"| reaction p99 (max {_ms(r.reaction.max_s)}; bare chain max {_ms(r.reaction_ceiling.max_s)}; "
        f"{r.reaction.count} changes each) | {_ms(r.reaction.p99_s)} | "
        f"bare chain {_ms(r.reaction_ceiling.p99_s)}: **{p99_x:.1f}×** | ≤ 250 ms | "
        f"{_met(r.reaction.p99_s <= REACTION_P99_S)} |",
        f"| naive loop every {NAIVE_PERIOD_S:g} s, p50 / p99: derived from the period, not measured | – | "
        f"{_ms(r.naive.p50_s)} / {_ms(r.naive.p99_s)} | – | – |",
        f"| naive loop measured at a {r.naive_loop_period_s:g} s period ({r.naive_loop.count} changes), "
        "p50 / p99 | – | "
        f"{_ms(r.naive_loop.p50_s)} / {_ms(r.naive_loop.p99_s)} "
        f"({r.naive_loop.p50_s / r.naive_loop_period_s:.2f} / {r.naive_loop.p99_s / r.naive_loop_period_s:.2f} "
        f"of a period) | – | – |",
        f"| no-op reconciles/s, 2 worker processes ({ours_median.count:,} a round; median of {rounds} rounds, "
        f"min–max) | {_range(r.throughput)} | bare task, one statement: {_range(r.ceiling)}: "
        f"**{ratio:.0%}** of it (median / median) | ≥ 60% | {_met(ratio >= THROUGHPUT_RATIO)} |",
        f"| each Setpoint round / the bare round after it, median (min–max) | – | {_range(r.round_ratios, '{:.0%}')} "
        "| – | – |",
        f"| every round in order, Setpoint / bare task | {_rounds(r.throughput_rounds)} | "
        f"{_rounds(r.ceiling_rounds)} | – | – |",
        f"| median round, from the UPDATE (or first send) to the last commit | {ours_median.end_to_end_per_s:.0f}/s | "
        f"bare task {bare_median.end_to_end_per_s:.0f}/s | – | – |",
        f"| database round trips per no-op reconcile ({rt.reconciles} counted) | {rt.per_reconcile:.2f} | "
        f"bare task {r.bare_round_trips:.2f} | ≤ 3 | "
        f"{_met(rt.per_reconcile <= ROUND_TRIPS + 0.005)} |",
    ]
    for ours in (s for s in r.scale if s.peer == "Setpoint"):
        peer = next((s for s in r.scale if s.peer != "Setpoint" and s.resources == ours.resources), None)
        lines += _scale_rows(ours, peer)
    if r.hold:
        lines += _hold_rows(r.hold)
    needed = 10_000 / 60
    lines += [
        "",
        f"Headroom: 10,000 resources at a 60 s interval (the load held) need {needed:.0f} no-op "
        f"reconciles/s, {needed / r.throughput.median:.0%} of the median throughput measured here. Setpoint's "
        f"scheduler enqueues on a {TICK_S:g} s tick (a NOTIFY wakes it at once for changed rows, not for rows "
        "that merely fall due), so its due → enqueued lateness is spread over one tick.",
    ]
    lines += ["", "CPU per task over all throughput rounds (milliseconds, all processes of each group):", ""]
    lines += ["| processes | Setpoint | bare task |", "|---|---|---|"]
    for group in dict.fromkeys([*ours_cpu, *bare_cpu]):
        lines.append(f"| {group} | {_cpu_ms(ours_cpu.get(group))} | {_cpu_ms(bare_cpu.get(group))} |")
    ours_total, bare_total = sum(ours_cpu.values()), sum(bare_cpu.values())
    lines += [
        f"| all | {ours_total:.2f} | {bare_total:.2f} |",
        "",
        "With two cores, CPU is the limit, so CPU per task is a second estimate of the ratio, less at the mercy of "
        f"other load than the rates: by it, Setpoint's capacity is {bare_total / ours_total:.0%} of the bare task's.",
    ]
    lines += ["", "Statements per no-op reconcile, as sent on the wire:", ""]
    lines += ["| statement | per reconcile |", "|---|---|"]
    lines += [f"| `{sql}` | {count:.2f} |" for sql, count in rt.statements.items()]
    lines += ["", f"Connections opened while counting: {rt.connections_opened}."]
    if r.healing:
        lines += ["", *healing_section(r.healing)]
    if r.dependencies:
        lines += ["", *dependencies_section(r.dependencies, r.reaction)]
    lines += ["", METHOD]
    return "\n".join(lines) + "\n"


METHOD = """## How each figure was measured

- **Reaction**: one `UPDATE bench_noops SET payload = payload + 1` at a time (autocommit), after a random pause,
  then the status row read every 2 ms until it shows that generation observed and ready; the time from sending
  the UPDATE to that read. Real `python -m scheduler` and `celery -A worker worker -c 2`, production settings.
  **Ceiling**: the bare chain (bench/bare_chain.py), the same trip with no Setpoint code: an UPDATE of a plain
  table whose row trigger NOTIFYs the name, a listener process sending one Celery task per notification, and a
  bare task (same worker settings, `-c 2`) doing one status UPDATE; timed the same way. The two are measured
  change by change alternately (Setpoint, bare, Setpoint, …), after 3 uncounted changes each.
- **Naive reaction**: a periodic loop (Celery beat, cron, one APScheduler job per resource) does not know a row
  changed, so a change waits for the next pass at a random point of the period: p50 half a period, p99 0.99 of
  it. The figures for Setpoint's default 30 s are derived from that, not measured (a measured run would take
  hours). A real loop sending a reconcile of every resource each period (the same worker, Setpoint's scheduler
  not running) is measured at a short period to confirm the shape, with the changes placed at evenly spread
  points of the period.
- **Throughput**: `UPDATE statuses SET next_reconcile_at = now()` for every resource; the scheduler claims and
  sends them while the worker drains them. Rate = completions between the first and the last commit (database
  clock, `last_reconcile_at`). **Ceiling**: a bare Celery task (bench/bare.py) doing the same writes the
  cheapest way, one autocommit statement (a CTE that updates the status row, reading its generation, and
  inserts a run row: one round trip, where Setpoint's reconcile makes two), sent by the benchmark for the same
  resources (in Redis pipelines of 500, as the scheduler sends) to a worker with Setpoint's Celery settings
  (`-c 2` prefork, acks late, prefetch 1, events on). Rounds are interleaved (Setpoint, bare, Setpoint, bare,
  …), at least five each; each side's median is reported with its range, and the ratio is median over median.
- **Round trips**: a worker of its own connects through a counting TCP proxy (bench/wire.py); after a warm-up,
  its client→server turns are divided by the reconciles done. Statements are read from the protocol messages.
  The bare task's writes are counted through the same proxy, run by the benchmark on one connection.
- **Scheduler scale**: N resources at a 5-minute interval, first due times spread evenly over it; the first
  part of the interval is measured with no worker: a drain takes messages off Redis as they arrive (arrival −
  due = lateness) and marks the resource done as a worker would. CPU = process CPU seconds ÷ wall seconds
  (psutil, all threads); RSS sampled every 0.5 s. For Setpoint, the CPU of the PostgreSQL sessions serving its
  scheduler is shown apart. The naive peer is one APScheduler 3.x in-memory interval job per resource, each
  run sending the same Celery message, with APScheduler's defaults (1 s misfire grace: a late run is skipped,
  counted as "not sent").
- **Load held**: N resources at an interval, first due times spread evenly over it, run by the real scheduler
  and a `-c 2` worker with production settings (but SETPOINT_HISTORY_NOOPS_KEPT=5 and housekeeping every 30 s,
  so that retention prunes during the span). After one interval to settle, sampled every 2 s: the queue's
  length in Redis, how many resources are overdue, how many went longer than an interval plus 10% jitter
  without a reconcile, and the run history's size. Reconciles per resource come from each one's claim counter
  (one per message sent), the span's first against its last.
- **CPU per task**: CPU seconds (psutil) of each group of processes over all throughput rounds, divided by the
  tasks done: the worker (main process and pool), the scheduler, the PostgreSQL sessions on the benchmark's
  database, and the benchmark itself (polling; for the ceiling, also sending the tasks).
- **Healing** (issue 12): a stack of its own (real scheduler, `-c 2` worker, production settings) manages Files
  spread over 100 folders and one-replica Workloads (`sleep 3600`). *Tamper → healed*: each of the tampered
  Files is overwritten once, one at a time in random order after a 20-50 ms pause; the benchmark stats the file
  every 1 ms (a stat makes no inotify event for the watcher to sift) and reads it once the stat changes; the time
  is from before the write to the read that finds the desired content. *Replica SIGKILL → replacement running*:
  each replica, once it has run over 10 s (a younger one counts as crash-looping and backs off), is SIGKILLed,
  and its workload's record folder read every 1 ms until a new record names a live pid (the shim writes it right
  after starting the process). *supervisord* (PyPI's `supervisor`, `autorestart=true`, otherwise its defaults)
  runs the same `sleep` in as many programs, killed one at a time in a thread of their own over the same span;
  its new child is found by scanning /proc every 1 ms for a child of supervisord running the program's command
  (asking supervisord over RPC would wake its loop and make it faster). *Polling alone*: the same worker
  restarted with SETPOINT_WATCH=false, half the tampered Files and the Workloads given a short interval (their
  updates spread over one interval, so they do not fall due together; fewer Files, so that the load polling
  makes stays well within the worker's capacity on a busy machine); every file tampered once at a random moment
  of one interval, and every replica killed once at a random moment of a span of at least one interval and
  0.25 s per replica (so their restarts do not pile up in the worker), all awaited together (files stat'ed and
  record folders read every 2 ms). *Idle*: with
  every File converged and nothing due for a minute, CPU and peak RSS (sampled every 0.5 s; pool processes'
  shared pages counted in each) of the worker's main process and pool over the window, watching and then not;
  the watcher also reloads its watches every 30 s, which a window shorter than that may not include. The worker
  without watching has just started, while the watching one converged every File: its pool's memory has grown
  with those reconciles, so the main process's RSS (the watcher's home) is the fairer memory comparison.
- Other jobs may share the machine: the load averages above say how busy it was, and the ranges of the rounds
  how much that moved the rates. Figures from one run vary by some 10-20%.
"""


def _latency(latency: Latency) -> str:
    return f"{_ms(latency.p50_s)} / {_ms(latency.p99_s)} / {_ms(latency.max_s)}"


def _gain(gain: tuple[float, float]) -> str:
    return f"**{gain[0]:.0f}×** / **{gain[1]:.0f}×**"


def healing_section(h: Healing) -> list[str]:
    """Issue 12's figures: watching against polling alone and against supervisord, with its targets."""
    watching, polling = h.idle
    every = f"{h.poll_interval_s:g} s"
    extra_mb = watching.usage.peak_rss_mb - polling.usage.peak_rss_mb
    main_mb = watching.main_rss_mb - polling.main_rss_mb
    return [
        "## Healing (issue 12): watching, polling alone, supervisord",
        "",
        f"Measured on a stack of its own: one worker with watching on, then one with SETPOINT_WATCH=false on the "
        f"same node and files; {h.duration_s:.0f} s in all. Watching: interval {h.watched_interval_s:g} s, so "
        f"polling cannot be what heals. Polling alone: {h.tamper_polling.count} of those Files and the Workloads "
        f"at a {every} interval (short, so that it is measured in seconds): it heals in about half an interval at "
        "the median and a whole one at p99, plus up to a scheduler tick (0.5 s); at Setpoint's default 30 s "
        "interval it would take ten times as long again.",
        "",
        "| measure | Setpoint, watching | polling alone | faster by watching, p50 / p99 | peer | target | met |",
        "|---|---|---|---|---|---|---|",
        f"| tamper → file content back, p50 / p99 / max ({h.tamper_watching.count} Files, each tampered once; "
        f"polling: {h.tamper_polling.count}) | "
        f"{_latency(h.tamper_watching)} | at {every}: {_latency(h.tamper_polling)} | {_gain(h.tamper_gain)} | – | "
        f"p50 ≤ 100 ms, p99 ≤ 500 ms | "
        f"{_met(h.tamper_watching.p50_s <= HEAL_P50_S and h.tamper_watching.p99_s <= HEAL_P99_S)} |",
        f"| replica SIGKILL → replacement running, p50 / p99 / max ({h.kill_watching.count} kills; polling "
        f"{h.kill_polling.count}; supervisord {h.supervisord.count}) | {_latency(h.kill_watching)} | at {every}: "
        f"{_latency(h.kill_polling)} | {_gain(h.kill_gain)} | supervisord `autorestart=true`: "
        f"{_latency(h.supervisord)}; Setpoint {_gain(h.supervisord_gain)} faster | p50 ≤ 250 ms, ahead of "
        f"supervisord | {_met(h.kill_watching.p50_s <= REPLACE_P50_S and h.supervisord_gain[0] > 1)} |",
        f"| idle worker (main process + pool), {watching.files:,} Files in {watching.folders} folders, "
        f"{watching.window_s:g} s: CPU of one core | {watching.usage.cpu_share:.2%} | "
        f"{polling.usage.cpu_share:.2%} | – | – | a few percent (≤ {IDLE_CPU:.0%}) | "
        f"{_met(watching.usage.cpu_share <= IDLE_CPU)} |",
        f"| the same: peak RSS, processes summed; the main process alone (the watcher's) | "
        f"{watching.usage.peak_rss_mb:.0f} MB; {watching.main_rss_mb:.0f} MB | {polling.usage.peak_rss_mb:.0f} MB; "
        f"{polling.main_rss_mb:.0f} MB | watching adds {extra_mb:+.0f} MB; main process {main_mb:+.0f} MB | – | "
        "bounded | – |",
        f"| the same: inotify watches / threads of the worker's main process | {watching.inotify_watches} / "
        f"{watching.threads} | {polling.inotify_watches} / {polling.threads} | – | – | – | – |",
    ]


def healing_headlines(h: Healing) -> list[str]:
    watching, polling = h.idle
    every = f"{h.poll_interval_s:g} s"
    return [
        f"healing: tamper -> healed p50 / p99 {_ms(h.tamper_watching.p50_s)} / {_ms(h.tamper_watching.p99_s)} "
        f"watching (interval {h.watched_interval_s:g} s) vs {_ms(h.tamper_polling.p50_s)} / "
        f"{_ms(h.tamper_polling.p99_s)} polling alone at {every}: watching heals {h.tamper_gain[0]:.0f}x faster "
        f"(p50)",
        f"replica SIGKILL -> replacement running p50 / p99 {_ms(h.kill_watching.p50_s)} / "
        f"{_ms(h.kill_watching.p99_s)} watching vs {_ms(h.kill_polling.p50_s)} / {_ms(h.kill_polling.p99_s)} "
        f"polling at {every} ({h.kill_gain[0]:.0f}x) and supervisord {_ms(h.supervisord.p50_s)} / "
        f"{_ms(h.supervisord.p99_s)} (Setpoint {h.supervisord_gain[0]:.0f}x faster at p50)",
        f"idle, {watching.files:,} watched files in {watching.folders} folders: worker CPU "
        f"{watching.usage.cpu_share:.2%} of a core, RSS {watching.usage.peak_rss_mb:.0f} MB (main process "
        f"{watching.main_rss_mb:.0f} MB); watching off {polling.usage.cpu_share:.2%}, "
        f"{polling.usage.peak_rss_mb:.0f} MB ({polling.main_rss_mb:.0f} MB)",
    ]


def dependencies_section(d: Dependencies, reaction: Latency) -> list[str]:
    """Issue 13's figures: how fast a fix travels down a chain, and what a tree costs against a flat set."""
    target = d.chain_length * reaction.p99_s
    tree_s = median([c.seconds for c in d.tree])
    flat_s = median([c.seconds for c in d.flat])
    parts = ("scheduler", "worker", "database")

    def cpu(rounds: list[Converge], part: str) -> str:
        return f"{median([c.cpu_ms_per_resource[part] for c in rounds]):.2f} ms"

    return [
        "## Dependencies (issue 13): a chain, a tree",
        "",
        f"A chain of {d.chain_length} resources, each depending on the one before, all with a "
        f"{SLOW_S} s interval: from the UPDATE fixing the first (it was invalid) to the last ready, "
        f"{d.chain.count} chains. Beside it, what a periodic re-check of unready dependencies every "
        f"{FLUX_RECHECK_S:g} s (Flux's `dependsOn`) would take: computed, not run (each hop waits for the next "
        "re-check: half the period on average, all of it at worst).",
        "",
        "| measure | Setpoint | target | met | a 30 s re-check |",
        "|---|---|---|---|---|",
        f"| fix → last of {d.chain_length} ready, p50 / p99 / max | {_latency(d.chain)} | ≤ {d.chain_length} × "
        f"reaction p99 = {_ms(target)} | {_met(d.chain.p99_s <= target)} | {d.flux_expected_s:.0f} s expected, "
        f"{d.flux_worst_s:.0f} s at worst |",
        "",
        f"{d.tree_resources:,} resources in a three-level tree (a leaf depends on its middle, a middle on its root), "
        "inserted in one statement, against the same number without dependencies, converged by the same "
        f"scheduler and worker, alternately ({len(d.tree)} round(s) each; medians):",
        "",
        "| measure | tree | flat | tree / flat |",
        "|---|---|---|---|",
        f"| time to all ready | {tree_s:.2f} s | {flat_s:.2f} s | {tree_s / flat_s:.2f}× |",
        f"| reconciles | {median([c.reconciles for c in d.tree]):.0f} | {median([c.reconciles for c in d.flat]):.0f}"
        " | – |",
        *(
            f"| CPU per resource: {part} | {cpu(d.tree, part)} | {cpu(d.flat, part)} | {d.tree_over_flat(part):.2f}× |"
            for part in parts
        ),
    ]


def dependencies_headlines(d: Dependencies, reaction: Latency) -> list[str]:
    tree_s = median([c.seconds for c in d.tree])
    flat_s = median([c.seconds for c in d.flat])
    return [
        f"dependencies: fix -> last of a chain of {d.chain_length} ready p50 / p99 {_ms(d.chain.p50_s)} / "
        f"{_ms(d.chain.p99_s)} (target {_ms(d.chain_length * reaction.p99_s)}; a 30 s re-check: "
        f"~{d.flux_expected_s:.0f} s); a {d.tree_resources:,}-resource tree converges in {tree_s:.2f} s against "
        f"{flat_s:.2f} s flat, CPU per resource x{d.tree_over_flat('scheduler'):.2f} scheduler, "
        f"x{d.tree_over_flat('worker'):.2f} worker, x{d.tree_over_flat('database'):.2f} database",
    ]


def headlines(r: Results) -> list[str]:
    p50_x, p99_x = r.reaction_ratio
    lines = [
        f"reaction p50 / p99 {_ms(r.reaction.p50_s)} / {_ms(r.reaction.p99_s)} vs the bare chain "
        f"{_ms(r.reaction_ceiling.p50_s)} / {_ms(r.reaction_ceiling.p99_s)} ({p50_x:.1f}x / {p99_x:.1f}x); "
        f"naive loop measured at {r.naive_loop_period_s:g} s: {_ms(r.naive_loop.p50_s)} / {_ms(r.naive_loop.p99_s)}",
        f"throughput median {_range(r.throughput)} no-op reconciles/s = {r.throughput_ratio:.0%} of the "
        f"one-statement bare-task ceiling's median {_range(r.ceiling)} over {r.throughput.count} interleaved rounds",
        f"round trips per no-op reconcile: {r.round_trips.per_reconcile:.2f} (bare task {r.bare_round_trips:.2f})",
    ]
    if r.hold:
        h = r.hold
        lines.append(
            f"load held: {h.resources:,} resources at {h.interval_s:g} s for {h.held_s:.0f} s: "
            f"{h.reconciles_per_s:.1f} reconciles/s (expected {h.expected_per_s:.1f}), each resource "
            f"{h.rounds_min}-{h.rounds_max} times (allowed {h.pace[0]}-{h.pace[1]}), queue max {h.queue_max}, "
            f"starved {h.starved_max}, history max {h.history_max:,} (bound {h.history_bound:,})"
        )
    for load in r.scale:
        database = f" (+{load.database_cpu_share:.1%} PostgreSQL)" if load.database_cpu_share is not None else ""
        lines.append(
            f"{load.peer} scheduler at {load.resources // 1000}k: CPU {load.usage.cpu_share:.1%}{database}, "
            f"RSS {load.usage.peak_rss_mb:.0f} MB, lateness p99 {_ms(load.lateness.p99_s)}, "
            f"not sent {load.missed} of {load.expected}"
        )
    if r.healing:
        lines += healing_headlines(r.healing)
    if r.dependencies:
        lines += dependencies_headlines(r.dependencies, r.reaction)
    return lines


def chart(r: Results, path: Path) -> None:
    rows = 3 if r.hold else 2
    fig, axes = plt.subplots(rows, 3, figsize=(15, 4.25 * rows))
    fig.suptitle(f"Setpoint benchmark ({r.mode} run, {r.date}) — {r.machine}", fontsize=10)
    _reaction(axes[0][0], r)
    _throughput(axes[0][1], r)
    _bars(axes[0][2], "database round trips per no-op reconcile",
          {"Setpoint": r.round_trips.per_reconcile, "bare task\n(one statement)": r.bare_round_trips},
          targets=[(ROUND_TRIPS, "target")])  # fmt: skip
    loads = {f"{s.peer}\n{s.resources // 1000}k": s for s in r.scale}
    _bars(axes[1][0], "scheduler CPU (share of one core)", {k: s.usage.cpu_share for k, s in loads.items()},
          targets=[(SCHEDULER_CPU, "target at 100k")])  # fmt: skip
    _bars(axes[1][1], "scheduler peak RSS (MB)", {k: s.usage.peak_rss_mb for k, s in loads.items()},
          targets=[(SCHEDULER_RSS_MB, "target at 100k")])  # fmt: skip
    _bars(axes[1][2], "due → enqueued lateness p99 (s, log)", {k: s.lateness.p99_s for k, s in loads.items()},
          log=True, targets=[(SCHEDULER_LATENESS_P99_S, "target at 100k")])  # fmt: skip
    if r.hold:
        _hold_chart(axes[2], r.hold)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reaction(ax: plt.Axes, r: Results) -> None:
    """p50 and p99 side by side for each way of reacting; the naive 30 s loop's bars are hatched: derived."""
    groups = [
        ("Setpoint", r.reaction, "tab:blue", ""),
        ("bare chain\n(ceiling)", r.reaction_ceiling, "tab:gray", ""),
        (f"naive loop {r.naive_loop_period_s:g} s\n(measured)", r.naive_loop, "tab:gray", ""),
        (f"naive loop {NAIVE_PERIOD_S:g} s\n(derived)", r.naive, "white", "//"),
    ]
    width = 0.38
    for i, (_, latency, color, hatch) in enumerate(groups):
        for offset, value, alpha in ((-width / 2, latency.p50_s, 1.0), (width / 2, latency.p99_s, 0.55)):
            bar = ax.bar(i + offset, value, width, color=color, alpha=alpha, hatch=hatch, edgecolor="tab:gray")
            ax.bar_label(bar, labels=[_ms(value).replace(" ", "")], fontsize=7)
    ax.set_xticks(range(len(groups)), [label for label, *_ in groups])
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.001, top=NAIVE_PERIOD_S * 4)  # from 1 ms, so that every bar's height reads
    for value, label in ((REACTION_P50_S, "p50 target"), (REACTION_P99_S, "p99 target")):
        _target(ax, value, label, where=0.5)
    p50_x, p99_x = r.reaction_ratio
    ax.set_title(f"reaction: UPDATE → status ready (s, log; left p50, right p99)\n"
                 f"Setpoint takes {p50_x:.1f}× (p50) / {p99_x:.1f}× (p99) the bare chain's time",
                 fontsize=10)  # fmt: skip
    ax.tick_params(axis="x", labelsize=8)


def _throughput(ax: plt.Axes, r: Results) -> None:
    """Each side's median as a bar, its range as an error bar, every round as a dot."""
    sides = [("Setpoint", r.throughput, r.throughput_rounds, "tab:blue"),
             ("bare task\n(one statement)", r.ceiling, r.ceiling_rounds, "tab:gray")]  # fmt: skip
    for i, (_, spread, rounds, color) in enumerate(sides):
        error = [[spread.median - spread.low], [spread.high - spread.median]]
        bar = ax.bar(i, spread.median, 0.6, color=color, yerr=error, capsize=6, ecolor="black")
        ax.bar_label(bar, labels=[f"{spread.median:.0f}/s\n({spread.low:.0f}–{spread.high:.0f})"], fontsize=8,
                     padding=8)  # fmt: skip
        ax.plot([i + 0.22] * len(rounds), [rate.steady_per_s for rate in rounds], "o", color="black", markersize=3)
    ax.set_xticks(range(len(sides)), [label for label, *_ in sides])
    ax.set_ylim(top=max(rate.steady_per_s for rate in [*r.throughput_rounds, *r.ceiling_rounds]) * 1.3)
    _target(ax, r.ceiling.median * THROUGHPUT_RATIO, "60% of the ceiling's median")
    ax.set_title(f"no-op reconciles/s (2 processes), median of {r.throughput.count} interleaved rounds\n"
                 f"Setpoint at {r.throughput_ratio:.0%} of the ceiling (dots: rounds)", fontsize=10)  # fmt: skip
    ax.tick_params(axis="x", labelsize=8)


def _target(ax: plt.Axes, value: float, label: str, where: float = 1.0) -> None:
    """A dashed red line at `value`, labelled at `where` (0 left, 1 right) of the plot, readable over bars."""
    ax.axhline(value, color="tab:red", linestyle="--", linewidth=1)
    align = {0.0: "left", 1.0: "right"}.get(where, "center")
    ax.text(where, value, f" {label} ", transform=ax.get_yaxis_transform(), ha=align, va="bottom", color="tab:red",
            fontsize=7, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8})  # fmt: skip


def _hold_chart(axes: list[plt.Axes], h: Hold) -> None:
    minutes = [s.at_s / 60 for s in h.samples]
    where = f"{h.resources:,} resources at {h.interval_s:g} s"
    series = [
        ("messages queued", [s.queue for s in h.samples], None),
        ("resources overdue / starved", [s.overdue for s in h.samples], [s.starved for s in h.samples]),
        ("run history rows", [s.history for s in h.samples], None),
    ]
    for ax, (title, values, others) in zip(axes, series, strict=True):
        ax.plot(minutes, values, color="tab:blue", linewidth=1, label=f"overdue > {hold.SLACK_S:g} s")
        if others is not None:
            ax.plot(
                minutes,
                others,
                color="tab:orange",
                linewidth=1,
                linestyle="--",
                label=f"no reconcile for {h.starved_after_s:g} s",
            )
            ax.legend(fontsize=8, loc="upper right")
        top = max(1, *values, *(others or []))
        if title == "run history rows":
            ax.axhline(h.history_bound, color="tab:red", linestyle="--", linewidth=1)
            top = max(top, h.history_bound)
        ax.set_ylim(bottom=0, top=top * 1.15)
        ax.set_title(f"load held, {where}: {title}", fontsize=10)
        ax.set_xlabel("minutes", fontsize=8)
        ax.tick_params(labelsize=8)


def _bars(ax: plt.Axes, title: str, values: dict[str, float], log: bool = False,
          targets: list[tuple[float, str]] | None = None) -> None:  # fmt: skip
    colors = ["tab:blue" if k.startswith("Setpoint") else "tab:gray" for k in values]
    bars = ax.bar(list(values), list(values.values()), color=colors)
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values.values()], fontsize=8)
    for value, label in targets or []:
        _target(ax, value, label)
    if log:
        ax.set_yscale("log")
        every = [*values.values(), *(value for value, _ in targets or [])]
        ax.set_ylim(bottom=min(every) / 10, top=max(every) * 3)  # room below the smallest bar, above the highest
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
