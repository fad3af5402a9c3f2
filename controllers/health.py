"""Health checks of workload replicas: a command or an HTTP GET per replica, run in parallel, time-boxed."""

from __future__ import annotations

import dataclasses
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from controllers import processes

CHECK_TIMEOUT_S = 5.0
"""One check taking longer fails; all of a workload's checks run at once, so observing takes at most this."""


@dataclasses.dataclass(frozen=True)
class Check:
    """One replica's last health check."""

    slot: int
    healthy: bool
    detail: str


@dataclasses.dataclass(frozen=True)
class Probe:
    """How to check a replica: exactly one of command and url is set."""

    command: str | None = None
    url: str | None = None
    """`{replica}` is replaced by the replica's slot."""
    cwd: str | None = None


def check_all(probe: Probe, replicas: dict[int, dict[str, str]]) -> tuple[Check, ...]:
    """Check every replica (slot → its environment) at once."""
    if not replicas or not (probe.command or probe.url):
        return ()
    with ThreadPoolExecutor(max_workers=min(len(replicas), 16)) as pool:
        return tuple(pool.map(lambda item: check(probe, *item), sorted(replicas.items())))


def check(probe: Probe, slot: int, env: dict[str, str]) -> Check:
    if probe.command:
        try:
            done = subprocess.run(
                processes.argv_for(probe.command),
                env=env,
                cwd=probe.cwd,
                capture_output=True,
                text=True,
                timeout=CHECK_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return Check(slot, False, f"health command failed: {error}")
        detail = (done.stdout + done.stderr).strip()[-200:]
        return Check(slot, done.returncode == 0, f"health command exited {done.returncode}: {detail}")
    url = (probe.url or "").replace("{replica}", str(slot))
    try:
        with urllib.request.urlopen(url, timeout=CHECK_TIMEOUT_S) as answer:  # noqa: S310 - the admin's own URL
            return Check(slot, 200 <= answer.status < 300, f"GET {url}: {answer.status}")
    except (OSError, ValueError) as error:
        return Check(slot, False, f"GET {url}: {error}")
