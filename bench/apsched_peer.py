"""The naive scheduler: one APScheduler (3.x) in-memory interval job per resource, each run sending a reconcile.

`python -m bench.apsched_peer JOBS INTERVAL_S START_AT QUEUE BROKER_URL`: job i first runs at
START_AT + (i - 1) * INTERVAL_S / JOBS, then every INTERVAL_S. Everything else is APScheduler's default, as a
naive user would leave it (a 1 s misfire grace time, a pool of 10 threads). It prints `ready late_jobs=N` once
every job is scheduled (N jobs whose first run had already passed), then runs until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from bench import bare, resources
from setpoint.settings import Settings
from worker.celery_app import TASK


def main(argv: list[str]) -> int:
    jobs, interval_s, start_at, queue, broker_url = int(argv[0]), float(argv[1]), float(argv[2]), argv[3], argv[4]
    app = bare.make_app(Settings(broker_url=broker_url, queue=queue))

    def send(name: str) -> None:
        app.send_task(TASK, args=[resources.KIND, name], queue=queue)

    clock = BackgroundScheduler(timezone=UTC)
    step = interval_s / jobs
    for i in range(1, jobs + 1):  # in due order, so each lands at the end of the job store's sorted list
        first = datetime.fromtimestamp(start_at + (i - 1) * step, UTC)
        name = resources.name(i)
        clock.add_job(send, "interval", seconds=interval_s, start_date=first, args=[name], id=name)
    clock.start()
    late = sum(1 for job in clock.get_jobs() if job.next_run_time != job.trigger.start_date)
    print(f"ready late_jobs={late}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    clock.shutdown(wait=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
