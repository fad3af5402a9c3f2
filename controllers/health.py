"""Health checks of workload replicas: a command or an HTTP GET per replica, run in parallel, time-boxed.

A command runs as the replicas' user, in a session of its own: one that outlives its time is killed with
everything it started. A URL's credentials (`http://user:password@host/`) are sent as HTTP basic
authentication and never shown: every detail names the URL with `***` in their place.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import os
import signal
import subprocess
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from controllers import identity, processes

CHECK_TIMEOUT_S = 5.0
"""One check taking longer fails; all of a workload's checks run at once, so observing takes at most this."""
REAP_TIMEOUT_S = 5.0
"""How long to wait for a killed check's output pipes to close (a process that left its session may hold them)."""


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
    user: identity.User | None = None
    """Whom a command runs as (None: the worker's own user)."""


def check_all(probe: Probe, replicas: dict[int, dict[str, str]]) -> tuple[Check, ...]:
    """Check every replica (slot → its environment) at once."""
    if not replicas or not (probe.command or probe.url):
        return ()
    with ThreadPoolExecutor(max_workers=min(len(replicas), 16)) as pool:
        return tuple(pool.map(lambda item: check(probe, *item), sorted(replicas.items())))


def check(probe: Probe, slot: int, env: dict[str, str], timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    if probe.command:
        return _run(probe, slot, env, timeout_s)
    return _get(probe, slot, timeout_s)


def _run(probe: Probe, slot: int, env: dict[str, str], timeout_s: float) -> Check:
    try:
        proc = subprocess.Popen(
            processes.argv_for(probe.command or ""),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=probe.cwd or "/",
            start_new_session=True,
            user=probe.user.uid if probe.user else None,
            group=probe.user.gid if probe.user else None,
            extra_groups=list(probe.user.groups) if probe.user else None,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return Check(slot, False, f"health command failed: {error}")
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=REAP_TIMEOUT_S)
        return Check(slot, False, f"health command timed out after {timeout_s:g}s")
    finally:
        _kill_group(proc.pid)  # what it left running in the background goes with it
        proc.wait()
    detail = output.decode(errors="replace").strip()[-200:]
    return Check(slot, proc.returncode == 0, f"health command exited {proc.returncode}: {detail}")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _get(probe: Probe, slot: int, timeout_s: float) -> Check:
    url = (probe.url or "").replace("{replica}", str(slot))
    shown = redact(url, url)
    try:
        plain, headers = without_credentials(url)
        request = urllib.request.Request(plain, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 - the admin's own URL
            return Check(slot, 200 <= answer.status < 300, f"GET {shown}: {answer.status}")
    except (OSError, ValueError, http.client.HTTPException) as error:  # HTTPException: a malformed answer or URL
        return Check(slot, False, redact(f"GET {shown}: {error}", url))


def without_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its user:password, and the basic authentication header that carries them instead."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
    header = {"Authorization": "Basic " + base64.b64encode(token).decode()}
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), header


def redact(text: str, url: str) -> str:
    """`text` with the credentials of `url` (its user:password, and the password alone) replaced by ***.

    Plain string work, so that it holds for a URL too malformed to parse."""
    netloc = url.partition("://")[2]  # up to the last @ before any query: a password may hold a '/'
    for end in "?#":
        netloc = netloc.partition(end)[0]
    if "@" not in netloc:
        return text
    userinfo = netloc.rpartition("@")[0]
    password = userinfo.partition(":")[2]
    secrets = {userinfo, urllib.parse.unquote(userinfo), password, urllib.parse.unquote(password)} - {""}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
