"""Files reached from "/" one folder at a time, never through a symlink, never blocking on what is not a file.

Every operation opens each folder of the path with O_NOFOLLOW relative to the one before, and then acts on
the last name relative to its folder's descriptor: a folder swapped for a symlink halfway fails the walk
instead of leading elsewhere. Only regular files are read, opened with O_NONBLOCK and read up to
MAX_READ_BYTES, so a FIFO, a device or a huge file can never hold a worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import PurePosixPath

from setpoint.errors import InvalidSpec

MAX_READ_BYTES = 16 * 1024 * 1024
"""The largest file Setpoint reads (and so writes): a larger one is different from any desired content."""

_CHUNK = 1024 * 1024
_FOLDER = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclasses.dataclass(frozen=True)
class Seen:
    """A regular file as found: its content's digest (None when over MAX_READ_BYTES), size and mode bits."""

    sha256: str | None
    size: int
    mode: int
    inode: tuple[int, int]


def check(path: str, roots: tuple[str, ...] = ()) -> None:
    """Refuse, without touching the disk, a path that is not absolute and normalized, or outside every root."""
    if "\0" in path:
        raise InvalidSpec("path", f"must not contain NUL, got {path!r}")
    if not path.startswith("/"):
        raise InvalidSpec("path", f"must be absolute, got {path!r}")
    parts = path.split("/")[1:]
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidSpec(
            "path", f"must be normalized (no '..', '.', '//' or trailing '/') and name a file, got {path!r}"
        )
    if roots and not any(under(path, root) for root in roots):
        raise InvalidSpec(
            "path", f"must be under one of {', '.join(roots)} (SETPOINT_FILE_ROOTS), got {path!r}", "PathNotAllowed"
        )


def under(path: str, root: str) -> bool:
    """Whether `path` lies inside the folder `root`, component by component (/etc2 is not under /etc)."""
    inside, folder = PurePosixPath(path).parts, PurePosixPath(root).parts
    return len(inside) > len(folder) and inside[: len(folder)] == folder


def parse_roots(text: str) -> tuple[str, ...]:
    """SETPOINT_FILE_ROOTS as folders (settings.py has checked that each is absolute, without '.' or '..')."""
    return tuple(str(PurePosixPath(part.strip())) for part in text.split(",") if part.strip())


@contextlib.contextmanager
def folder(path: str, *, create: bool = False) -> Iterator[int | None]:
    """A descriptor of `path`'s folder reached without following symlinks (missing folders made if `create`),
    or None when a folder is missing. Raises InvalidSpec if a folder on the way is a symlink or not a folder."""
    fd = os.open("/", _FOLDER)
    try:
        walked = ""
        for name in path.split("/")[1:-1]:
            walked += "/" + name
            try:
                step = _step(fd, name, walked, create)
            except FileNotFoundError:
                yield None
                return
            os.close(fd)
            fd = step
        yield fd
    finally:
        os.close(fd)


def _step(fd: int, name: str, walked: str, create: bool) -> int:
    for _ in range(3):  # a folder made or removed by someone else meanwhile: look again
        try:
            return os.open(name, _FOLDER, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=fd)
        except OSError as error:
            if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise InvalidSpec("path", f"{walked} is a symlink; Setpoint never follows symlinks") from None
            raise InvalidSpec("path", f"{walked} is not a folder") from None
    raise FileNotFoundError(errno.ENOENT, "folder keeps vanishing", walked)


def what(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, words in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return words
    return "not a regular file"


def _not_regular(path: str, mode: int) -> InvalidSpec:
    if stat.S_ISLNK(mode):
        return InvalidSpec("path", f"{path} is a symlink; Setpoint never follows symlinks")
    return InvalidSpec("path", f"{path} is {what(mode)}; Setpoint manages regular files only")


@contextlib.contextmanager
def _open(fd: int, path: str) -> Iterator[int]:
    """The regular file `path` (in folder `fd`) opened for reading, never blocking, never through a symlink."""
    name = PurePosixPath(path).name
    found = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if not stat.S_ISREG(found.st_mode):
        raise _not_regular(path, found.st_mode)
    try:
        file = os.open(name, _READ, dir_fd=fd)
    except OSError as error:
        if error.errno == errno.ELOOP:  # swapped for a symlink since the stat
            raise _not_regular(path, stat.S_IFLNK) from None
        raise
    try:
        opened = os.fstat(file)
        if not stat.S_ISREG(opened.st_mode):
            raise _not_regular(path, opened.st_mode)
        yield file
    finally:
        os.close(file)


def _read(file: int) -> Seen:
    info = os.fstat(file)
    digest = _digest(file) if info.st_size <= MAX_READ_BYTES else None
    return Seen(digest, info.st_size, stat.S_IMODE(info.st_mode), (info.st_dev, info.st_ino))


def _digest(file: int) -> str | None:
    hasher, total = hashlib.sha256(), 0
    while chunk := os.read(file, _CHUNK):
        total += len(chunk)
        if total > MAX_READ_BYTES:
            return None  # it grew while read
        hasher.update(chunk)
    return hasher.hexdigest()


def inspect(path: str) -> Seen | None:
    """The regular file at `path`, or None if nothing is there; InvalidSpec if something else is."""
    with folder(path) as fd:
        if fd is None:
            return None
        try:
            with _open(fd, path) as file:
                return _read(file)
        except FileNotFoundError:
            return None


def temp_name(path: str) -> str:
    """The one temporary name a write of `path` uses, beside it: an interrupted write leaves at most this one."""
    return f".{PurePosixPath(path).name}.setpoint-tmp"


def write(path: str, data: bytes, mode: int) -> None:
    """Replace the file at `path` with `data` and `mode` at once: readers see the old file or the new one."""
    with folder(path, create=True) as fd:
        if fd is None:
            raise FileNotFoundError(errno.ENOENT, "a folder keeps vanishing", path)
        temp = temp_name(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=fd)  # a previous write's, interrupted; unlink never follows a symlink
        file = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(file, view) :]
            os.fchmod(file, mode)
            os.fsync(file)
        finally:
            os.close(file)
        name = PurePosixPath(path).name
        with contextlib.suppress(FileNotFoundError):
            there = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(there.st_mode):  # never replace a symlink, a folder or a device
                os.unlink(temp, dir_fd=fd)
                raise _not_regular(path, there.st_mode)
        os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)


def chmod(path: str, mode: int) -> None:
    """Set the mode bits of the regular file at `path`, through its descriptor (never by path)."""
    with folder(path) as fd:
        if fd is None:
            raise FileNotFoundError(errno.ENOENT, "folder missing", path)
        with _open(fd, path) as file:
            os.fchmod(file, mode)


def remove(path: str, digests: tuple[str, ...]) -> str | None:
    """Remove the file at `path` if its content's digest is one of `digests`, and the write's temporary file;
    None if removed or gone, else why it was left."""
    try:
        with folder(path) as fd:
            if fd is None:
                return None
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                temp = os.stat(temp_name(path), dir_fd=fd, follow_symlinks=False)
                if stat.S_ISREG(temp.st_mode):
                    os.unlink(temp_name(path), dir_fd=fd)
            try:
                with _open(fd, path) as file:
                    seen = _read(file)
            except FileNotFoundError:
                return None
            if seen.sha256 is None or seen.sha256 not in digests:
                return "changed since Setpoint wrote it"
            now = os.stat(PurePosixPath(path).name, dir_fd=fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != seen.inode:
                return "replaced while Setpoint looked at it"
            os.unlink(PurePosixPath(path).name, dir_fd=fd)
            return None
    except InvalidSpec as error:
        return str(error).removeprefix("path: ")
