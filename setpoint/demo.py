"""`setpoint demo`: the story Setpoint comes from, told with real processes, and a chart of drift over time.

Three servers (workloads) and their configuration file start in order. Then, with the reconciler
stopped, disorder grows: one server is left on an old version, the config is fixed by hand in a
different way, one server is powered off to save energy, one is struck by lightning. Then the
reconciler runs again and order returns. All along, the demo counts the resources that are out of
their desired state, by asking their controllers (observe, then plan: anything planned is drift).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlmodel import Session, select

from controllers import processes
from controllers.file import FileController
from controllers.workload import WorkloadController
from models import File, Workload
from models.database import make_engine
from setpoint import stack
from setpoint.settings import Settings

PREFIX = "demo-"
SERVERS = ("web", "api", "batch")
SAMPLE_S = 0.2


@dataclasses.dataclass(frozen=True)
class Event:
    at_s: float
    label: str


class Story:
    """Tells the demo step by step, measuring drift in the background."""

    def __init__(self, engine: Engine, settings: Settings, workdir: Path, say: Callable[[str], None]) -> None:
        self.engine = engine
        self.settings = settings
        self.workdir = workdir
        self.say = say
        self.started = time.monotonic()
        self.samples: list[tuple[float, int]] = []
        self.events: list[Event] = []
        self.phases: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self.controllers: dict[str, Any] = {"Workload": WorkloadController(settings), "File": FileController()}

    def now_s(self) -> float:
        return time.monotonic() - self.started

    def tell(self, line: str) -> None:
        self.say(f"[dim]t+{self.now_s():5.1f}s[/] {line}")

    def mark(self, label: str) -> None:
        self.events.append(Event(self.now_s(), label))

    def drifted(self) -> int:
        """How many demo resources are out of their desired state right now, by their controllers: anything
        planned, or anything unhealthy (a replica gone and waiting out a crash back-off plans nothing yet)."""
        count = 0
        with Session(self.engine) as session:
            rows: list[Any] = [*session.exec(select(Workload).where(Workload.name.startswith(PREFIX)))]  # type: ignore[attr-defined]
            rows += [*session.exec(select(File).where(File.name.startswith(PREFIX)))]  # type: ignore[attr-defined]
        for row in rows:
            controller = self.controllers[row.kind]
            actual = controller.observe(row)
            health = controller.health(row, actual)
            if controller.plan(row, actual) or (health is not None and not health.healthy):
                count += 1
        return count

    def sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((self.now_s(), self.drifted()))
            self._stop.wait(SAMPLE_S)

    def wait(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the demo waited {timeout_s:.0f}s for {what}")
            time.sleep(0.1)

    def ready(self, names: list[str]) -> bool:
        with self.engine.connect() as conn:
            count = conn.execute(
                text("SELECT count(*) FROM statuses WHERE name = ANY(:names) AND ready"), {"names": names}
            ).scalar_one()
        return count == len(names)

    def sql(self, statement: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(statement), params)

    def replicas(self, server: str) -> list[int]:
        return [
            r.pid for r in processes.observe(self.settings.state_dir, PREFIX + server, time.time()) if r.alive and r.pid
        ]


def run(settings: Settings, chart: Path, say: Callable[[str], None]) -> None:
    data_dir = Path(settings.data_dir) / "demo"
    state_dir = data_dir / "state"
    # Quick restarts after a crash, so the story is not spent waiting out back-offs.
    settings = settings.model_copy(update={"state_dir": str(state_dir), "crashloop_base_seconds": 1.0})
    # Always on embedded servers of its own: the demo deletes its rows and stops its reconciler, which must
    # never touch a real deployment's database or queue.
    with stack.servers({}, data_dir) as servers:
        stack.migrate(servers.database_url)
        engine = make_engine(servers.database_url)
        _reset(engine)
        config = data_dir / "app.conf"
        child_settings = {
            "SETPOINT_STATE_DIR": str(state_dir),
            "SETPOINT_TICK_SECONDS": "0.2",
            "SETPOINT_CRASHLOOP_BASE_SECONDS": "1",
        }
        reconciler = stack.Processes(servers, quiet=True, settings=child_settings)
        story = Story(engine, settings, data_dir, say)
        sampler = threading.Thread(target=story.sample, daemon=True)
        try:
            say("[bold]The reconciler is running. Three servers and their configuration start, in order.[/]")
            sampler.start()
            story.phases.append((0.0, "running"))
            story.sql(
                "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, :c, 2)",
                n=PREFIX + "config",
                p=str(config),
                c="workers = 4\n",
            )
            for server in SERVERS:
                story.sql(
                    "INSERT INTO workloads (name, command, replicas, env, interval_seconds) "
                    "VALUES (:n, 'sleep 3600', 2, '{\"APP_VERSION\": \"1\"}', 2)",
                    n=PREFIX + server,
                )
                story.wait(partial(story.ready, [PREFIX + server]), 60, f"{server} to start")
                story.tell(f"{server} is up: 2 replicas of version 1")
            story.wait(lambda: story.ready([PREFIX + "config"]), 30, "the config file")
            story.tell(f"config written to {config}")
            time.sleep(1)  # let the chart show a calm stretch

            say("[bold red]The reconciler stops (nobody is awake). Disorder grows.[/]")
            reconciler.stop()
            story.phases.append((story.now_s(), "stopped"))
            _incidents(story, config)
            time.sleep(2)

            say("[bold green]The reconciler runs again. It observes, diffs, acts: order returns.[/]")
            story.phases.append((story.now_s(), "running"))
            reconciler = stack.Processes(servers, quiet=True, settings=child_settings)
            names = [PREFIX + s for s in (*SERVERS, "config")]
            story.wait(lambda: story.drifted() == 0 and story.ready(names), 90, "order to return")
            story.tell("every resource matches its desired state again")
            time.sleep(1)
        finally:
            story._stop.set()
            if sampler.is_alive():
                sampler.join()
            _reset(engine)
            with contextlib.suppress(TimeoutError):  # the reconciler tears the demo down, if it runs
                story.wait(lambda: not any(story.replicas(s) for s in SERVERS), 30, "the demo's replicas to stop")
            reconciler.stop()
            for server in SERVERS:  # whatever is left, if it did not
                for replica in processes.observe(settings.state_dir, PREFIX + server, time.time()):
                    processes.stop(replica, grace_s=5)
            engine.dispose()
        draw(story, chart)
        say(f"chart of drift over time written to [bold]{chart}[/]")


def _incidents(story: Story, config: Path) -> None:
    story.sql('UPDATE workloads SET env = \'{"APP_VERSION": "2"}\' WHERE name = :n', n=PREFIX + "api")
    story.mark("api left on v1")
    story.tell("api should now run version 2, but nobody rolls it out: it is left on the old version")
    time.sleep(2)
    config.write_text("workers = 16  # hot fix, 2 a.m.\n")
    story.mark("config hand-edited")
    story.tell("someone fixes the config by hand, in a different way")
    time.sleep(2)
    for pid in story.replicas("batch"):
        os.kill(pid, signal.SIGTERM)
    story.mark("batch powered off")
    story.tell("batch is powered off to save energy")
    time.sleep(2)
    for pid in story.replicas("web"):
        os.kill(pid, signal.SIGKILL)
    story.mark("web struck by lightning")
    story.tell("web is struck by lightning: its processes are gone")


def _reset(engine: Engine) -> None:
    """Remove the demo's rows (the reconciler tears their real things down, if it runs)."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM workloads WHERE name LIKE 'demo-%'"))
        conn.execute(text("DELETE FROM files WHERE name LIKE 'demo-%'"))


def draw(story: Story, chart: Path) -> None:
    figure = chart_of(story)
    chart.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(chart)
    from matplotlib import pyplot

    pyplot.close(figure)


LABEL_ROWS = 4
"""Event labels alternate between this many rows above the line, so that neighbours do not overlap."""


def chart_of(story: Any) -> Any:
    """The chart of drift over time: whole resources on the y axis, each event named above the line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    times = [t for t, _ in story.samples]
    drift = [d for _, d in story.samples]
    figure, axes = pyplot.subplots(figsize=(9, 5), dpi=110)
    end = times[-1] if times else 1.0
    bounds = [*story.phases, (end, "")]
    for (start, phase), (stop, _) in zip(bounds, bounds[1:], strict=False):
        color = "#d9f2d9" if phase == "running" else "#f7d4d4"
        label = "reconciler running" if phase == "running" else "reconciler stopped"
        axes.axvspan(start, stop, color=color, label=label)
    axes.step(times, drift, where="post", color="#222222", linewidth=2, label="resources out of desired state")
    resources = len(SERVERS) + 1
    for index, event in enumerate(story.events):
        row = resources + 0.5 + (index % LABEL_ROWS) * 0.55
        axes.plot([event.at_s, event.at_s], [0, row], color="#888888", linewidth=0.8, linestyle=":")
        axes.annotate(event.label, (event.at_s, row), fontsize=8, va="bottom", ha="left", color="#444444")
    axes.set_xlabel("seconds")
    axes.set_ylabel("resources drifted")
    axes.set_ylim(0, resources + 0.5 + LABEL_ROWS * 0.55 + 0.2)
    axes.set_yticks(range(resources + 1))  # whole resources only, and none in the labels' band
    axes.set_title("Disorder grows without the loop; order returns with it")
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    axes.legend(unique.values(), unique.keys(), loc="upper left", fontsize=8, framealpha=0.9)
    figure.tight_layout()
    return figure
