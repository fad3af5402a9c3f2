"""Watched folders: where each resource's watches are anchored, and the watchdog observer that watches them.

A watch (worker/controller.py) names a path; inotify watches folders, so each watch is anchored in the folder that
holds its path (or, with names, the folder itself), else in the nearest folder above that exists, so a deleted
folder is noticed when it comes back. Each folder above an anchor guards it: it is watched for its own deletion or
rename alone (no event of its entries reaches Setpoint, so guarding a busy /tmp costs nothing), since a folder
renamed higher up gives no event to the watch below, which follows it to its new name. Exactly the folders that
anchor or guard a watch are watched, one inotify watch each, at most `max_folders` of them (guards are shared: a
thousand files in /srv/app/* add three, for /srv/app, /srv and /). A watched folder deleted or renamed is stale:
its inotify watch is dead or follows the folder's inode elsewhere, so the next placing watches that path anew. The
watcher (worker/watcher.py) says what to place and hears which resources an event concerns.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Callable

from watchdog.events import DirDeletedEvent, DirMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
from watchdog.observers.inotify_c import InotifyConstants, Mask
from watchdog.observers.inotify_move_event_grouper import (
    GroupedInotifyEvent,
    InotifyMoveEventGrouper,
    PathedInotifyEvent,
)

from worker.controller import Watch
from worker.watches import Key

log = logging.getLogger("setpoint.watch")

CHANGES = {"created", "deleted", "modified", "moved", "closed", "attrib"}
"""Event types that change a file (`attrib`: chmod, chown); opens and reads (Setpoint's own observations among
them) are not changes."""
GONE = {"deleted", "moved"}
MOVE_PAIRING_S = 0.01
"""How long watchdog holds a rename's first half waiting for its second (its default, 0.5 s, stalls every event
behind it that long whenever a rename is read in two halves: a rename's halves come together, or not at all)."""


def anchor(watch: Watch) -> str:
    """The folder to watch for `watch`: the file's folder (or, with names, the folder itself), else the nearest
    folder above that exists, so a deleted folder is noticed when it comes back."""
    folder = watch.path if watch.names else os.path.dirname(watch.path)
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
    return folder


def guards(anchored: str) -> list[str]:
    """The folders above an anchor, nearest first, up to the root."""
    above = []
    while anchored != os.path.dirname(anchored):
        anchored = os.path.dirname(anchored)
        above.append(anchored)
    return above


def matches(watch: Watch, event_type: str, path: str) -> bool:
    """Whether an event of `event_type` at `path` changes what `watch` names."""
    if event_type not in CHANGES:
        return False
    if path == watch.path:
        return event_type in GONE or not watch.names  # a folder's own "modified" is any entry's change
    if watch.path.startswith(path.rstrip("/") + "/"):  # a folder above: gone, or back again
        return event_type in GONE or event_type == "created"
    folder, name = os.path.split(path)
    return folder == watch.path and any(fnmatch.fnmatchcase(name, pattern) for pattern in watch.names)


class _Emitter(InotifyEmitter):
    """watchdog's inotify emitter, which also says when a watched folder itself is renamed (IN_MOVE_SELF, which
    watchdog neither asks the kernel for nor reports): its watch follows the folder's inode to its new name, so
    what should be at the old path is no longer watched, and is likely gone. Reported as the folder moved to
    nowhere (`dest_path` empty)."""

    def get_event_mask_from_filter(self) -> Mask:
        if self._event_filter == set(SELF_ONLY):  # a guard: the folder's own deletion or rename, nothing else
            return Mask(InotifyConstants.IN_DELETE_SELF | InotifyConstants.IN_MOVE_SELF)
        return Mask(super().get_event_mask_from_filter() | InotifyConstants.IN_MOVE_SELF)

    def build_and_queue_event(self, event: GroupedInotifyEvent, *, full_events: bool = False) -> None:
        if isinstance(event, PathedInotifyEvent) and event.ev.is_move_self:
            self.queue_event(DirMovedEvent(self._decode_path(event.path), ""))
            return
        super().build_and_queue_event(event, full_events=full_events)


class _Observer(InotifyObserver):
    """watchdog's inotify observer, with `_Emitter`."""

    def __init__(self) -> None:
        InotifyMoveEventGrouper.delay = MOVE_PAIRING_S
        super().__init__()
        self._emitter_class = _Emitter


SELF_ONLY = (DirDeletedEvent, DirMovedEvent)
"""The event filter of a guard, which `_Emitter` watches for the folder's own deletion or rename alone."""


def _placed(event: str, key: Key, folder: str) -> None:
    log.debug(event, extra={"kind": key[0], "resource": key[1], "folder": folder})


class _Folder(FileSystemEventHandler):
    """The handler for one watched folder: which resources' watches are anchored there, and which it guards."""

    def __init__(self, path: str, fired: Callable[[set[Key]], None]) -> None:
        self.path = path
        self.fired = fired
        self.watches: dict[Key, tuple[Watch, ...]] = {}
        self.guarded: set[Key] = set()
        """Resources with a watch anchored below this folder."""
        self.scheduled: ObservedWatch | None = None
        self.scheduled_whole = False
        """Whether it is scheduled for every event (it anchors a watch), or for its own deletion or rename alone."""
        self.stale = False
        """The folder itself was deleted or renamed: its inotify watch is dead or follows it elsewhere, even if a
        folder of that name comes back."""

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [os.fsdecode(event.src_path)]
        if event.dest_path:
            paths.append(os.fsdecode(event.dest_path))
        if paths[0] == self.path and event.event_type in GONE:
            self.stale = True
            if self.guarded:
                self.fired(set(self.guarded))
        hit = {
            key
            for key, kept in list(self.watches.items())
            for watch in kept
            for path in paths
            if matches(watch, event.event_type, path)
        }
        if hit:
            self.fired(hit)


class Folders:
    """The watched folders of one watcher. `fired` is called from watchdog's thread with the resources an event
    concerns; `degraded(what, why)` when a folder cannot be watched. Used from the watcher's thread alone."""

    def __init__(
        self, max_folders: int, fired: Callable[[set[Key]], None], degraded: Callable[[str, str], None]
    ) -> None:
        self.max_folders = max_folders
        self._fired = fired
        self._degraded = degraded
        self._folders: dict[str, _Folder] = {}
        self._anchored: dict[Key, set[str]] = {}
        """Which folders each resource's watches are anchored in."""
        self._guarded: dict[Key, set[str]] = {}
        """Which folders guard each resource's anchors."""
        self.observer: BaseObserver = _Observer()
        self.scheduled = 0
        """How many folders are watched, as of the last placing."""

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()

    def restart_observer(self) -> None:
        """A new observer for one that stopped: every folder is scheduled again at the next placing."""
        self.observer = _Observer()
        for folder in self._folders.values():
            folder.scheduled = None
        self.scheduled = 0
        self.observer.start()

    def whole(self) -> bool:
        """Whether every folder with a watch is watched."""
        return self.scheduled == len(self._folders) and self.observer.is_alive()

    def keep_only(self, keys: set[Key]) -> None:
        """Drop the watches of every resource but these (deleted, paused, moved to another node)."""
        for key in [key for key in self._anchored if key not in keys]:
            for path in self._anchored.pop(key):
                self._unanchor(key, path)
            for path in self._guarded.pop(key, set()):
                self._unguard(key, path)

    def place(self, wanted: dict[Key, tuple[Watch, ...]]) -> bool:
        """Anchor each resource's watches where they belong now, and watch exactly the folders with a watch;
        False if a folder vanished on the way (place everything again)."""
        for key, kept in wanted.items():
            at: dict[str, list[Watch]] = {}
            for watch in kept:
                at.setdefault(anchor(watch), []).append(watch)
            for path in self._anchored.get(key, set()) - set(at):
                self._unanchor(key, path)
            for path, here in at.items():
                folder = self._folder(path)
                if key not in folder.watches:
                    _placed("watching", key, path)
                folder.watches[key] = tuple(here)
            self._anchored[key] = set(at)
            above = {path for anchored in at for path in guards(anchored)}
            for path in self._guarded.get(key, set()) - above:
                self._unguard(key, path)
            for path in above:
                self._folder(path).guarded.add(key)
            self._guarded[key] = above
        placed = True
        self.scheduled = sum(folder.scheduled is not None for folder in self._folders.values())
        anchors = [(path, folder) for path, folder in self._folders.items() if folder.watches]
        guards_only = [(path, folder) for path, folder in self._folders.items() if not folder.watches]
        for path, folder in anchors + guards_only:  # within the limit, anchors first
            needed = bool(folder.watches or folder.guarded)
            if folder.scheduled is not None and (
                folder.stale or not needed or folder.scheduled_whole != bool(folder.watches)
            ):
                self.observer.unschedule(folder.scheduled)
                folder.scheduled, folder.stale = None, False
                self.scheduled -= 1
            if not needed:
                del self._folders[path]
            elif folder.scheduled is None and self.scheduled < self.max_folders:
                placed = self._schedule(folder) and placed
            elif folder.scheduled is None:
                self._degraded(path, f"SETPOINT_WATCH_MAX_FOLDERS ({self.max_folders}) reached")
        return placed

    def _unanchor(self, key: Key, path: str) -> None:
        folder = self._folders.get(path)
        if folder is not None and folder.watches.pop(key, None) is not None:
            _placed("unwatching", key, path)

    def _unguard(self, key: Key, path: str) -> None:
        folder = self._folders.get(path)
        if folder is not None:
            folder.guarded.discard(key)

    def _schedule(self, folder: _Folder) -> bool:
        """Watch the folder; False if it is gone since anchored."""
        whole = bool(folder.watches)
        try:
            only = None if whole else list(SELF_ONLY)
            folder.scheduled = self.observer.schedule(folder, folder.path, recursive=False, event_filter=only)
            folder.scheduled_whole = whole
            self.scheduled += 1
        except FileNotFoundError:
            return False
        except OSError as error:  # inotify's limit, most often (fs.inotify.max_user_watches)
            self._degraded(folder.path, f"{type(error).__name__}: {error}")
        return True

    def _folder(self, path: str) -> _Folder:
        if path not in self._folders:
            self._folders[path] = _Folder(path, self._fired)
        return self._folders[path]
