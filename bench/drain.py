"""Stands in for the workers while a scheduler is measured alone: takes its messages off Redis as they arrive,
notes when each came, and (for Setpoint) marks the resource done so it falls due again an interval later.

Without the last step every claimed row would stay due and enqueued, and each claim would wade through all of
them: a cost no running fleet has. The arrival time is when the message was taken off the queue, never before
it was sent, so lateness measured from it errs on the late side, by this loop's pace (milliseconds).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable

import redis

DONE_EVERY_S = 0.2


class Drain:
    def __init__(self, broker_url: str, queue: str, done: Callable[[list[str]], None] | None = None) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self.done = done
        self.arrivals: dict[str, float] = {}
        """The epoch time each resource's first message was taken off the queue."""
        self.repeats = 0
        """Messages for a resource already seen."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Drain:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        client = redis.Redis.from_url(self.broker_url)
        pending: list[str] = []
        last_done = time.monotonic()
        try:
            while not self._stop.is_set():
                first = client.brpop([self.queue], timeout=0.1)
                taken_at = time.time()
                messages = [first[1], *(client.rpop(self.queue, 1000) or [])] if first else []  # type: ignore[index]
                for raw in messages:
                    name = _resource(raw)
                    if name in self.arrivals:
                        self.repeats += 1
                    else:
                        self.arrivals[name] = taken_at
                    pending.append(name)
                if self.done and pending and time.monotonic() - last_done >= DONE_EVERY_S:
                    self.done(pending)
                    pending, last_done = [], time.monotonic()
        finally:
            client.close()


def _resource(raw: bytes) -> str:
    """The resource a Celery message (protocol 2, JSON over Kombu's Redis transport) asks to reconcile."""
    envelope = json.loads(raw)
    args = json.loads(base64.b64decode(envelope["body"]))[0]
    return str(args[1])
