"""The File kind's controller: the file at `path` on the worker's host has `content` and `mode`."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import tempfile
from pathlib import PurePosixPath

from models.file import File
from worker.controller import Action, Controller, InvalidSpec


@dataclasses.dataclass(frozen=True)
class FileState:
    """What is on disk: whether the file exists, its content's digest and size, and its mode."""

    exists: bool
    sha256: str | None = None
    size: int | None = None
    mode: str | None = None


def digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def octal(mode: str) -> int:
    return int(mode, 8)


@dataclasses.dataclass(frozen=True)
class WriteContent(Action):
    path: str
    content: str
    mode: str

    def run(self) -> None:
        # Write beside the target and rename over it: a reader never sees half a file, and a kill
        # at any line leaves either the old file or the new one.
        target = PurePosixPath(self.path)
        os.makedirs(target.parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(self.content)
            os.chmod(tmp, octal(self.mode))
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def __str__(self) -> str:
        return f"write {len(self.content.encode())} bytes to {self.path}"


@dataclasses.dataclass(frozen=True)
class SetMode(Action):
    path: str
    mode: str

    def run(self) -> None:
        os.chmod(self.path, octal(self.mode))

    def __str__(self) -> str:
        return f"chmod {self.mode} {self.path}"


@dataclasses.dataclass(frozen=True)
class RemoveFile(Action):
    path: str

    def run(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __str__(self) -> str:
        return f"remove {self.path}"


class FileController(Controller[File, FileState]):
    model = File
    interval_seconds = 30
    host_local = True

    def validate(self, desired: File) -> None:
        path = PurePosixPath(desired.path)
        if not path.is_absolute():
            raise InvalidSpec("path", f"must be absolute, got {desired.path!r}")
        if ".." in path.parts or "\0" in desired.path:
            raise InvalidSpec("path", f"must not contain '..' or NUL, got {desired.path!r}")
        if desired.path.endswith("/") or path == PurePosixPath("/"):
            raise InvalidSpec("path", f"must name a file, not a directory, got {desired.path!r}")
        if os.path.isdir(desired.path):
            raise InvalidSpec("path", f"{desired.path} is a directory on this host; name a file")

    def observe(self, desired: File) -> FileState:
        try:
            with open(desired.path, "rb") as handle:
                data = handle.read()
                mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        except FileNotFoundError:
            return FileState(exists=False)
        return FileState(True, hashlib.sha256(data).hexdigest(), len(data), f"{mode:04o}")

    def plan(self, desired: File, actual: FileState) -> list[Action]:
        if not actual.exists or actual.sha256 != digest(desired.content):
            return [WriteContent(desired.path, desired.content, desired.mode)]
        if actual.mode is None or octal(actual.mode) != octal(desired.mode):
            return [SetMode(desired.path, desired.mode)]
        return []

    def teardown(self, desired: File, actual: FileState) -> list[Action]:
        return [RemoveFile(desired.path)] if actual.exists else []
