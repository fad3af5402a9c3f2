"""`python -m scheduler`: run a scheduler (active or standby) until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import sys

from scheduler import metrics
from scheduler.service import Scheduler
from setpoint import logs
from setpoint import settings as config
from worker.celery_app import app


def main() -> int:
    logs.configure()
    settings = config.get()
    scheduler = Scheduler(settings, app)
    metrics.serve(settings, scheduler.engine, lambda: scheduler.leading)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: scheduler.stop.set())
    scheduler.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
