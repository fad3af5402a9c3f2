"""What Setpoint wrote where on this host: the record that lets teardown remove only files Setpoint made.

One record per path, `<state_dir>/files/<sha256 of the path>.json`, names the File that wrote there and the
digests of what it may have left. Before a write the record lists the old and the new digest (the intent),
after it the new one only, so a worker killed at any line never leaves a record that would let teardown
remove a file Setpoint did not write. Keyed by path, not by name: a File deleted while another already
manages its path finds the other's record and leaves the file alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Record:
    """What one path holds by Setpoint's hand."""

    name: str
    """The File that wrote there."""
    path: str
    digests: tuple[str, ...]
    """Every content Setpoint may have left at the path (two only while a write is under way)."""


def location(state_dir: str, path: str) -> Path:
    """Where the record of `path` is kept: `<state_dir>/files/<sha256 of the path>.json` (its lock beside it)."""
    folder = Path(state_dir).expanduser() / "files"
    return folder / f"{hashlib.sha256(path.encode()).hexdigest()}.json"


def load(state_dir: str, path: str) -> Record | None:
    """The record of what Setpoint wrote at `path` (and which File wrote it), or None if it wrote nothing there."""
    try:
        data = json.loads(location(state_dir, path).read_text())
        record = Record(str(data["name"]), str(data["path"]), tuple(str(d) for d in data["digests"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable or damaged: claims nothing, so nothing is removed on its word
    return record if record.path == path else None


def mine(state_dir: str, name: str, path: str) -> Record | None:
    """The record of `path` if File `name` wrote it."""
    record = load(state_dir, path)
    return record if record is not None and record.name == name else None


@contextlib.contextmanager
def held(state_dir: str, path: str) -> Iterator[None]:
    """This host's writes, takeovers and removals of one path, one at a time (a File being deleted while the next
    File at its path writes), through a lock file beside the record that `forget` removes once no record is left.

    A waiter that gets the lock after its holder removed the file finds another file (or none) at its name, and
    locks again: two holders never hold different locks of one path at once."""
    lock = location(state_dir, path).with_suffix(".lock")
    lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break  # not removed by the holder before us
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


def save(state_dir: str, record: Record) -> None:
    """Write the record at once (a reader sees the old or the new one), readable by this user only; hold the
    path's lock."""
    target = location(state_dir, record.path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = target.with_suffix(".tmp")  # one name: every save of a path holds its lock (`held`)
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(dataclasses.asdict(record), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, target)


def intend(state_dir: str, name: str, path: str, digest: str) -> None:
    """Before writing `digest` at `path`: the record lists it beside what Setpoint left there before."""
    before = mine(state_dir, name, path)
    kept = tuple(d for d in (before.digests if before else ()) if d != digest)
    save(state_dir, Record(name, path, (*kept, digest)))


def wrote(state_dir: str, name: str, path: str, digest: str) -> None:
    """After the write: only `digest` is Setpoint's at `path`."""
    save(state_dir, Record(name, path, (digest,)))


def forget(state_dir: str, name: str, path: str) -> None:
    """Drop File `name`'s record of `path` (another File's is kept), and the path's lock once no record is left
    there, so deleted Files leave nothing behind; call it holding the lock."""
    record = location(state_dir, path)
    if mine(state_dir, name, path) is not None:
        with contextlib.suppress(FileNotFoundError):
            record.unlink()
    if not os.path.lexists(record):  # nobody's record: the next writer of the path makes a new lock
        for left in (record.with_suffix(".tmp"), record.with_suffix(".lock")):  # .tmp: a save killed midway
            with contextlib.suppress(FileNotFoundError):
                left.unlink()
