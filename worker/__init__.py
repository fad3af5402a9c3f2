"""The reconcile engine: the controller contract, the runtime that drives it, the Celery task, and the watcher
that makes a resource due the moment what it manages changes.

`celery -A worker worker` finds the Celery app here; it is imported lazily so that controllers can
import the contract (worker.controller) without pulling Celery and the database in with it.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from worker.celery_app import app

        return app
    raise AttributeError(name)
