"""The URL file: a running `setpoint up` writes where its servers are, so every other command in its folder finds them.

`setpoint up` writes `<data_dir>/urls.json` (0600) once its servers answer and removes it when it stops cleanly.
Settings read it when neither SETPOINT_DATABASE_URL nor SETPOINT_BROKER_URL is set. A file whose database no
longer answers (its `setpoint up` was killed) is still used, so that nothing silently falls back to another
database, but it is reported as stale wherever the URL's origin is shown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import psutil

FILE_NAME = "urls.json"
PROBE_TIMEOUT_S = 0.5


@dataclasses.dataclass(frozen=True)
class Found:
    """What a URL file says, and whether the `setpoint up` that wrote it still runs."""

    database_url: str
    broker_url: str
    path: Path
    pid: int
    live: bool

    @property
    def origin(self) -> str:
        if self.live:
            return f"the `setpoint up` running in this folder (pid {self.pid}, {self.path})"
        return (
            f"{self.path}, left by a `setpoint up` (pid {self.pid}) whose servers no longer answer: run `setpoint up` "
            "again, or set SETPOINT_DATABASE_URL and SETPOINT_BROKER_URL"
        )


def path_in(data_dir: str | Path) -> Path:
    return Path(data_dir) / FILE_NAME


def write(data_dir: Path, database_url: str, broker_url: str) -> Path:
    """Record this process's servers in `<data_dir>/urls.json`, readable by its user only, replaced atomically."""
    path = path_in(data_dir)
    temporary = path.with_name(f".{FILE_NAME}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    me = psutil.Process()
    record = {"database_url": database_url, "broker_url": broker_url, "pid": me.pid, "started": me.create_time()}
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out)
    temporary.replace(path)
    return path


def remove(data_dir: Path) -> None:
    """Remove the URL file, if it is this process's (another `setpoint up` may have written it since)."""
    path = path_in(data_dir)
    with contextlib.suppress(OSError, ValueError, TypeError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def read(data_dir: str | Path) -> Found | None:
    """The servers of the `setpoint up` that wrote `<data_dir>/urls.json`; None when there is no such file, or it
    is not a URL file of this user's (anyone else's is never trusted)."""
    path = path_in(data_dir)
    try:
        with path.open() as f:
            if os.fstat(f.fileno()).st_uid != os.getuid():
                return None
            record = json.loads(f.read(65536))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    database_url, broker_url, pid = record.get("database_url"), record.get("broker_url"), record.get("pid")
    if not (isinstance(database_url, str) and isinstance(broker_url, str) and isinstance(pid, int)):
        return None
    return Found(database_url, broker_url, path, pid, live=_answers(database_url))


def _answers(url: str) -> bool:
    """Whether something accepts connections where the URL points (one local connect: cheap when nothing does)."""
    try:
        parts = urlsplit(url)
        address = (parts.hostname or "127.0.0.1", parts.port or 5432)
    except ValueError:
        return False
    try:
        with socket.create_connection(address, timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def safe(url: str) -> str:
    """The URL without its password, fit for a log line or a message."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unreadable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
