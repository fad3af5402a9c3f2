"""The File kind's controller: the file at `path` on the worker's host has `content` and `mode`.

It never destroys what it did not make: a deleted File removes its file only if the content there is still
what Setpoint wrote (controllers/ownership.py keeps that record on the host). It never follows a symlink and
never blocks: every file is reached through controllers/safepath.py, and anything but a regular file, or a
path under a symlink or outside SETPOINT_FILE_ROOTS, is invalid and left untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from controllers import ownership, safepath
from models.file import File
from setpoint import settings as config
from worker.controller import Action, Controller, InvalidSpec, TransientError, Watch


@dataclasses.dataclass(frozen=True)
class FileState:
    """What is on disk: whether the file exists, its content's digest, size and mode, and whether Setpoint
    wrote what is there (and which File); `problem` says why the path cannot be managed (then nothing was read)."""

    exists: bool
    sha256: str | None = None
    size: int | None = None
    mode: str | None = None
    written_by_setpoint: bool = False
    """Its content is what Setpoint last wrote there (or was writing)."""
    written_by: str | None = None
    """The File whose record this path has, whatever is there now."""
    problem: str | None = None


def digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def octal(mode: str) -> int:
    return int(mode, 8)


@dataclasses.dataclass(frozen=True)
class WriteContent(Action):
    path: str
    content: str
    mode: str
    name: str
    """The File writing, as its ownership record names it."""
    state_dir: str
    """Where the ownership records are kept (settings.state_dir): always given, never the worker's cwd."""

    def run(self) -> None:
        # The record lists the new digest before the file holds it, and only it afterwards: a kill at any line
        # leaves a record that claims nothing Setpoint did not write.
        new = digest(self.content)
        with ownership.held(self.state_dir, self.path):
            ownership.intend(self.state_dir, self.name, self.path, new)
            safepath.write(self.path, self.content.encode(), octal(self.mode))
            ownership.wrote(self.state_dir, self.name, self.path, new)

    def __str__(self) -> str:
        return f"write {len(self.content.encode())} bytes to {self.path}"


@dataclasses.dataclass(frozen=True)
class TakeOver(Action):
    """Record as this File's what another File (since deleted or moved) wrote at the path, content as desired."""

    path: str
    sha256: str
    previous: str
    name: str
    state_dir: str

    def run(self) -> None:
        with ownership.held(self.state_dir, self.path):
            if ownership.mine(self.state_dir, self.previous, self.path) is not None:
                ownership.wrote(self.state_dir, self.name, self.path, self.sha256)

    def __str__(self) -> str:
        return f"take {self.path} over from File {self.previous!r}"


@dataclasses.dataclass(frozen=True)
class SetMode(Action):
    path: str
    mode: str

    def run(self) -> None:
        safepath.chmod(self.path, octal(self.mode))

    def __str__(self) -> str:
        return f"chmod {self.mode} {self.path}"


@dataclasses.dataclass(frozen=True)
class RemoveFile(Action):
    """Remove the file if it is still what Setpoint wrote there (checked again at the last moment)."""

    path: str
    name: str
    state_dir: str

    def run(self) -> None:
        with ownership.held(self.state_dir, self.path):
            record = ownership.mine(self.state_dir, self.name, self.path)
            if record is None:
                return
            left = safepath.remove(self.path, record.digests)
            if left is not None:  # changed since observed: the next attempt's teardown says what is there
                raise TransientError(f"left {self.path}: {left}")
            ownership.forget(self.state_dir, self.name, self.path)

    def __str__(self) -> str:
        return f"remove {self.path}"


@dataclasses.dataclass(frozen=True)
class LeaveFile(Action):
    """Leave the file where it is, saying why, and forget any record of writing there."""

    path: str
    why: str
    name: str
    state_dir: str

    def run(self) -> None:
        with ownership.held(self.state_dir, self.path):
            ownership.forget(self.state_dir, self.name, self.path)

    def __str__(self) -> str:
        return f"left {self.path}: {self.why}"


class FileController(Controller[File, FileState]):
    model = File
    interval_seconds = 30
    host_local = True

    def __init__(self, settings: config.Settings | None = None) -> None:
        self.settings = settings or config.get()
        self.roots = safepath.parse_roots(self.settings.file_roots)

    def validate(self, desired: File) -> None:
        safepath.check(desired.path, self.roots)
        if len(desired.content.encode()) > safepath.MAX_READ_BYTES:
            raise InvalidSpec("content", f"must be at most {safepath.MAX_READ_BYTES // 2**20} MiB")

    def watches(self, desired: File) -> tuple[Watch, ...]:
        try:
            safepath.check(desired.path, self.roots)
        except InvalidSpec:
            return ()  # never acted on, so nothing to heal
        return (Watch(desired.path),)

    def observe(self, desired: File) -> FileState:
        try:
            safepath.check(desired.path, self.roots)  # also when deleting, which skips validate
            seen = safepath.inspect(desired.path)
        except InvalidSpec as error:
            return FileState(exists=False, problem=str(error))
        record = ownership.load(self.settings.state_dir, desired.path)
        by = record.name if record else None
        if seen is None:
            return FileState(exists=False, written_by=by)
        wrote = record is not None and seen.sha256 is not None and seen.sha256 in record.digests
        return FileState(True, seen.sha256, seen.size, f"{seen.mode:04o}", wrote, by)

    def plan(self, desired: File, actual: FileState) -> list[Action]:
        if actual.problem:
            raise InvalidSpec("path", actual.problem.removeprefix("path: "))
        mine = (desired.name, self.settings.state_dir)
        if not actual.exists or actual.sha256 != digest(desired.content):
            return [WriteContent(desired.path, desired.content, desired.mode, *mine)]
        actions: list[Action] = []
        if actual.written_by_setpoint and actual.sha256 and actual.written_by not in (None, desired.name):
            actions.append(TakeOver(desired.path, actual.sha256, str(actual.written_by), *mine))
        if actual.mode is None or octal(actual.mode) != octal(desired.mode):
            actions.append(SetMode(desired.path, desired.mode))
        return actions

    def outputs(self, desired: File, actual: FileState) -> dict[str, Any]:
        """Its path and the digest of its declared content (what the file holds once ready): a workload that puts
        `{{ File/app-conf.outputs.sha256 }}` in its environment rolls when the content changes, not on a tamper."""
        return {"path": desired.path, "sha256": digest(desired.content)}

    def teardown(self, desired: File, actual: FileState) -> list[Action]:
        mine = (desired.name, self.settings.state_dir)
        if actual.problem:  # an invalid row was never acted on at this path: only forget it
            return [LeaveFile(desired.path, actual.problem, *mine)]
        if actual.written_by not in (None, desired.name):
            return (
                [LeaveFile(desired.path, f"managed by File {actual.written_by!r} now", *mine)] if actual.exists else []
            )
        if actual.written_by_setpoint:
            return [RemoveFile(desired.path, *mine)]
        if actual.exists:
            why = "changed since Setpoint wrote it" if actual.written_by else "Setpoint did not write it"
            return [LeaveFile(desired.path, why, *mine)]
        return [RemoveFile(desired.path, *mine)] if actual.written_by else []
