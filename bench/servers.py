"""The PostgreSQL and Redis the benchmark runs on, and the databases and queues it makes there and removes.

SETPOINT_BENCH_DATABASE_URL names a PostgreSQL whose user may create databases (default: the local server), and
SETPOINT_BENCH_BROKER_URL a Redis database (default: db 12 of the local server). Where either does not answer,
embedded servers are started for the run. Every database and queue the run makes carries its tag in its name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import redis
from sqlalchemy.engine import make_url

from bench import noop
from models.database import libpq_url, make_engine
from setpoint import embedded
from setpoint.stack import migrate

ADMIN_URL = os.environ.get("SETPOINT_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER_URL = os.environ.get("SETPOINT_BENCH_BROKER_URL", "redis://127.0.0.1:6379/12")
DEADLINES = "_kombu.binding_deadlines"


@dataclasses.dataclass(frozen=True)
class Servers:
    admin_url: str
    """A database on the server to connect to for CREATE and DROP DATABASE."""
    broker_url: str
    embedded: bool


@contextlib.contextmanager
def running() -> Iterator[Servers]:
    """The configured servers if both answer, else embedded ones in a temporary folder, stopped at the end."""
    if embedded.reachable_postgres(ADMIN_URL) and embedded.reachable_redis(BROKER_URL):
        yield Servers(ADMIN_URL, BROKER_URL, embedded=False)
        return
    with tempfile.TemporaryDirectory(prefix="setpoint-bench-") as folder:
        with embedded.running(Path(folder)) as services:
            yield Servers(services.database_url, services.broker_url, embedded=True)


class Databases:
    """A migrated template with the no-op kind, and clones of it (one per scenario), all dropped at the end."""

    def __init__(self, admin_url: str, tag: str) -> None:
        self.admin_url = admin_url
        self.tag = tag.replace("-", "_")
        self.made: list[str] = []
        self.template = f"{self.tag}_template"

    def prepare(self) -> None:
        """Make the template: `alembic upgrade head`, then the no-op kind's table, as a user's migration would."""
        self._create(self.template)
        migrate(self.url(self.template))
        engine = make_engine(self.url(self.template))
        with engine.begin() as conn:
            noop.create_table(conn)
        engine.dispose()

    def url(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def clone(self, label: str) -> str:
        """A fresh database copied from the template (PostgreSQL copies its files: no migration to run)."""
        return self.url(self._create(f"{self.tag}_{label}", template=self.template))

    def drop(self, url: str) -> None:
        database = make_url(url).database
        self._admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        if database in self.made:
            self.made.remove(database)

    def drop_all(self) -> None:
        for database in reversed(list(self.made)):
            self.drop(self.url(database))

    def _create(self, database: str, template: str | None = None) -> str:
        self._admin(f'CREATE DATABASE "{database}"' + (f' TEMPLATE "{template}"' if template else ""))
        self.made.append(database)
        return database

    def _admin(self, statement: str) -> None:
        with psycopg.connect(libpq_url(self.admin_url), autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]


def for_run(stack: contextlib.ExitStack, tag: str) -> tuple[Servers, Databases]:
    """The servers and a prepared template for one run tagged `tag`; its queues and databases go when `stack` closes."""
    found = stack.enter_context(running())
    stack.callback(delete_queues, found.broker_url, tag)
    dbs = Databases(found.admin_url, tag)
    stack.callback(dbs.drop_all)
    dbs.prepare()
    return found, dbs


def delete_queues(broker_url: str, tag: str) -> int:
    """Delete every Redis key and Kombu binding that names this run's tag; returns how many keys went."""
    client = redis.Redis.from_url(broker_url)
    try:
        deleted = 0
        for key in client.scan_iter(match=f"*{tag}*"):
            deleted += int(client.delete(key))
        for key in client.scan_iter(match="_kombu.binding.*"):
            stale = [member for member in client.smembers(key) if tag.encode() in member]
            if stale:
                client.srem(key, *stale)
        exchanges: list[bytes] = client.zrange(DEADLINES, 0, -1)  # type: ignore[assignment]
        for exchange in exchanges:  # Kombu's expiry times of fanout bindings: drop those of bindings now gone
            if not client.exists(b"_kombu.binding." + exchange):
                client.zrem(DEADLINES, exchange)
        return deleted
    finally:
        client.close()
