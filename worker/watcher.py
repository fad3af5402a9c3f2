"""The watcher: a thread in each worker's main process that heals at the speed of the event, not of the interval.

It keeps, with `watchdog` (inotify on Linux), the watches of the resources pinned to its node (worker/watches.py)
on the folders that hold them (worker/watchfolders.py), and when one fires makes that resource due now through
PostgreSQL; events within `watch_debounce_seconds` of the first are folded into one reconcile. It loads the
watches at start, whenever a desired row changes or a resource is pinned here (LISTEN), and every
`watch_resync_seconds`; after its start it looks at each watched resource once, since nobody watched while the
worker was down. Level-triggered all the same: a missed event only delays healing to the interval; so does a
watch that cannot be kept (inotify's limit, SETPOINT_WATCH_MAX_FOLDERS, the observer thread gone), which the log
says once and the gauge `setpoint_watch_degraded` shows while it lasts. A filesystem that gives no events (NFS,
FUSE) cannot be told from a quiet one: what lives there heals at its interval.

A watched folder that is deleted or renamed is noticed (its own inotify event) and its resources are made due,
then watched again where they belong; so is any folder above it (the folders above guard it: a rename of the
grandparent of a File gives no event to the watch on the File's folder, which moves along with it).
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from models import triggers
from models.database import CONNECT_ARGS, libpq_url, make_engine
from setpoint.settings import Settings
from worker import metrics, registry, watches
from worker.controller import Watch
from worker.watches import Key
from worker.watchfolders import Folders

log = logging.getLogger("setpoint.watch")

RUNNING_RETRY_S = 0.05
"""How soon a resource that was being reconciled when its event came is marked again."""
RUNNING_GIVE_UP_S = 300.0
"""After this, a resource still being reconciled is left to its interval."""
OBSERVER_CHECK_S = 1.0
"""How often the watcher thread looks whether watchdog's observer thread still runs, even when nothing happens."""


class Watcher:
    """Started from the worker's main process; `stop()` ends its threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node = settings.node_name
        self._engine = make_engine(settings.database_url, pool_size=1, max_overflow=1)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: dict[Key, float] = {}
        """Resources to make due, with when to (monotonic): their first event's time plus the debounce."""
        self._running_since: dict[Key, float] = {}
        """Resources whose event came while they were being reconciled, since when."""
        self._resync = True
        self._look_at_all = True
        """Events may have been missed (the worker was down, the observer died): look at every watched resource."""
        self._known: dict[Key, watches.Watched] = {}
        self._wanted: dict[Key, tuple[Watch, ...]] = {}
        self._folders = Folders(settings.watch_max_folders, self.fired, self._degraded)
        self._degraded_said = False
        metrics.WATCH_DEGRADED.labels(node=self.node).set(0)
        self._threads = [
            threading.Thread(target=self._run, name="setpoint-watcher", daemon=True),
            threading.Thread(target=self._listen, name="setpoint-watch-listen", daemon=True),
        ]

    def start(self) -> None:
        self._folders.start()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._folders.stop()
        for thread in self._threads:
            thread.join(5)
        self._engine.dispose()

    def fired(self, keys: set[Key]) -> None:
        """Called from watchdog's thread: remember, and let the watcher thread make them due."""
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._pending.setdefault(key, now + self.settings.watch_debounce_seconds)
        self._wake.set()

    # The watcher thread: make due, load watches, keep watchdog's folders.

    def _run(self) -> None:
        last_resync = 0.0
        while not self._stop.is_set():
            try:
                self._keep_observer()
                if self._resync or time.monotonic() - last_resync >= self.settings.watch_resync_seconds:
                    self._resync = False
                    last_resync = time.monotonic()
                    self._load()
                if self._look_at_all:
                    self._look_at_all = False
                    self.fired(set(self._wanted))
                self._flush()
            except Exception as error:  # the database away: the interval heals meanwhile
                self._resync = True
                log.warning("watcher failed, trying again", extra={"error": f"{type(error).__name__}: {error}"})
                self._stop.wait(1.0)
            self._wake.wait(self._next_wait_s(last_resync))
            self._wake.clear()

    def _next_wait_s(self, last_resync: float) -> float:
        with self._lock:
            if self._pending:
                return max(min(self._pending.values()) - time.monotonic(), 0.0)
        resync_in_s = last_resync + self.settings.watch_resync_seconds - time.monotonic()
        return min(max(resync_in_s, 0.0), OBSERVER_CHECK_S)

    def _flush(self) -> None:
        now = time.monotonic()
        with self._lock:
            ready = {key for key, at in self._pending.items() if at <= now}
            if not ready:
                return
        with self._engine.begin() as conn:
            marked = watches.mark_due(conn, self.node, ready)
        with self._lock:
            for key in ready:
                del self._pending[key]
                if key not in marked.running:
                    self._running_since.pop(key, None)
                elif now - self._running_since.setdefault(key, now) < RUNNING_GIVE_UP_S:
                    self._pending[key] = now + RUNNING_RETRY_S  # once that reconcile has ended
                else:
                    del self._running_since[key]  # left to its interval
        if marked.due:
            log.debug("made due by an event", extra={"resources": sorted(f"{k}/{n}" for k, n in marked.due)})
        self._place({key: self._wanted[key] for key in ready if key in self._wanted})  # a folder may have come back

    def _load(self) -> None:
        with self._engine.connect() as conn:
            self._known = watches.load(conn, self.node, registry.controllers(), self._known)
        wanted = {key: watched.watches for key, watched in self._known.items()}
        self._wanted = wanted
        self._folders.keep_only(set(wanted))
        self._place(wanted)

    def _place(self, wanted: dict[Key, tuple[Watch, ...]]) -> None:
        if not self._folders.place(wanted):  # a folder gone since anchored: anchor everything again
            self._resync = True
        metrics.WATCHED_FOLDERS.labels(node=self.node).set(self._folders.scheduled)
        if self._degraded_said and self._folders.whole():
            self._degraded_said = False
            metrics.WATCH_DEGRADED.labels(node=self.node).set(0)
            log.warning("watching restored", extra={"node": self.node, "folders": self._folders.scheduled})

    def _keep_observer(self) -> None:
        if self._folders.observer.is_alive() or self._stop.is_set():
            return
        self._degraded("the watchdog observer thread", "it stopped")
        self._folders.restart_observer()
        self._resync = self._look_at_all = True

    def _degraded(self, what: str, why: str) -> None:
        """Say once (until watching is whole again) that it is degraded; healing goes on at each interval."""
        if not self._degraded_said:
            self._degraded_said = True
            metrics.WATCH_DEGRADED.labels(node=self.node).set(1)
            log.warning(
                "watching degraded: what is not watched is healed at its resource's interval",
                extra={"node": self.node, "folder": what, "error": why},
            )

    # The listen thread: a desired row changed, or a resource was pinned here.

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(libpq_url(self.settings.database_url), autocommit=True, **CONNECT_ARGS) as conn:
                    conn.execute(f"LISTEN {triggers.CHANNEL}")
                    conn.execute(f"LISTEN {watches.CHANNEL}")
                    self._want_resync()  # whatever changed while nobody listened
                    while not self._stop.is_set():
                        heard = conn.notifies(timeout=1.0, stop_after=1)
                        if any(note.payload != watches.MARKED for note in heard):
                            self._stop.wait(self.settings.watch_debounce_seconds)  # let a burst arrive
                            self._want_resync()
            except psycopg.Error as error:
                log.warning("watch listen connection lost", extra={"error": str(error)})
                self._stop.wait(1.0)

    def _want_resync(self) -> None:
        self._resync = True
        self._wake.set()


def start(settings: Settings) -> Watcher | None:
    """A started watcher, unless SETPOINT_WATCH is off."""
    if not settings.watch:
        log.info("watching is off (SETPOINT_WATCH=false): changes are healed at each resource's interval")
        return None
    watcher = Watcher(settings)
    watcher.start()
    return watcher
