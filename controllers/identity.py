"""Who a replica is: which process a pid is (its kernel start time), and which user it runs as.

A pid alone can be reused after its process ends; a pid with its start time in clock ticks since boot,
as the kernel counts it (Linux), cannot. Unlike a wall-clock start time, it does not move when NTP or a
resumed VM steps the clock. The user comes from SETPOINT_RUN_AS, resolved on this host.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
from pathlib import Path

from setpoint.errors import InvalidSpec


class RunAsUnknown(InvalidSpec):
    """SETPOINT_RUN_AS names no user of this host: give an existing user name, or uid:gid."""

    def __init__(self, message: str) -> None:
        super().__init__("run_as", message, "RunAsUnknown")


class RunAsDenied(InvalidSpec):
    """SETPOINT_RUN_AS names another user, and only a worker running as root can start processes as another
    user: unset it, or run the worker as root."""

    def __init__(self, message: str) -> None:
        super().__init__("run_as", message, "RunAsDenied")


@dataclasses.dataclass(frozen=True)
class User:
    """Whom replicas and health commands run as: passed to subprocess.Popen(user=, group=, extra_groups=)."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str | None = None
    name: str | None = None

    def popen_args(self) -> dict[str, object]:
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}


def user(run_as: str | None) -> User | None:
    """The user SETPOINT_RUN_AS names, or None to run as the worker itself (unset, or the worker's own user)."""
    if not run_as:
        return None
    name, _, group = run_as.strip().partition(":")
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        entry = None
    if entry is None and not (name.isdigit() and group.isdigit()):
        raise RunAsUnknown(f"SETPOINT_RUN_AS={run_as!r} names no user of this host: give a user name, or uid:gid")
    if group and not group.isdigit():
        raise RunAsUnknown(f"SETPOINT_RUN_AS={run_as!r}: the group after ':' must be a number (a gid)")
    uid = entry.pw_uid if entry else int(name)
    gid = int(group) if group else entry.pw_gid  # type: ignore[union-attr]
    groups = tuple(os.getgrouplist(entry.pw_name, gid)) if entry else ()
    if uid == os.geteuid() and gid == os.getegid():
        return None
    if os.geteuid() != 0:
        raise RunAsDenied(
            f"SETPOINT_RUN_AS={run_as!r} names another user (uid {uid}) than the worker's (uid {os.geteuid()}), "
            "and only a worker running as root can start processes as another user: unset it, or run the "
            "worker as root"
        )
    return User(uid, gid, groups, entry.pw_dir if entry else None, entry.pw_name if entry else None)


def start_ticks(pid: int) -> int | None:
    """The start time of process `pid`, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of the whole line


def running(pid: int | None, ticks: int | None) -> bool:
    """Whether the process recorded as (`pid`, `ticks`) is still running (a zombie has ended)."""
    if pid is None or ticks is None or start_ticks(pid) != ticks:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def group(leader: int, ticks: int | None) -> list[int]:
    """The live processes of the process group `leader` started, leader included while it runs.

    A pid equal to the group's id but with another start time is a newcomer that reused the number
    after the whole group ended: never ours.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, state, pgrp = int(entry.name), fields[0], int(fields[2])
        if pgrp != leader or state == "Z":
            continue
        if pid == leader and int(fields[19]) != ticks:
            continue
        members.append(pid)
    return members
