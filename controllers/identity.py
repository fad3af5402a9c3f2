"""Which process a pid is: its start time in clock ticks since boot, as the kernel counts it (Linux).

A pid alone can be reused after its process ends; a pid with this start time cannot. Unlike a
wall-clock start time, it does not move when NTP or a resumed VM steps the clock.
"""

from __future__ import annotations

from pathlib import Path


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
