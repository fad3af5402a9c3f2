"""A replica's log, written by its shim from the replica's output pipe and bounded like Docker's json-file.

Once the log would grow past `max_bytes` it is renamed to `LOG.1` (replacing the previous one) and a new
one begun, so a slot's logs never take more than twice `max_bytes`. A write that fails (full disk, the
folder removed) drops that output rather than stopping the shim or blocking the replica.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CHUNK_BYTES = 64 * 1024


def previous(path: Path) -> Path:
    """Where the part of a log before its last rotation is kept."""
    return path.with_name(path.name + ".1")


class Logbook:
    """One replica log file, private (0600) whatever the umask, reopened when another shim rotated it."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.fd: int | None = None

    def pump(self, source: int) -> None:
        """Copy everything read from `source` into the log, until its writers have all closed it."""
        with contextlib.suppress(OSError):
            while chunk := os.read(source, min(CHUNK_BYTES, self.max_bytes)):
                self.write(chunk)
        self.close()

    def write(self, chunk: bytes) -> None:
        try:
            fd = self._current()
            size = os.fstat(fd).st_size
            if size and size + len(chunk) > self.max_bytes:
                os.replace(self.path, previous(self.path))
                fd = self._reopen()
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            self.close()  # this output is lost; the next write tries afresh

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def _current(self) -> int:
        """The open log, reopened if the file at `path` is no longer the one open (rotated by another shim
        of the same slot during a rollout, or removed)."""
        if self.fd is not None:
            try:
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    return self.fd
            except FileNotFoundError:
                pass
        return self._reopen()

    def _reopen(self) -> int:
        self.close()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        os.fchmod(fd, 0o600)
        self.fd = fd
        return fd
