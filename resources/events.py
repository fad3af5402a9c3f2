"""Events as readers see them: published from the inbox, read after a cursor, filtered, and followed live.

`setpoint events`, `setpoint get -w` and the API's event stream all read through here. Each read first calls
setpoint_publish_events(), which numbers waiting inbox rows in commit order (models/event.py), so `id > cursor`
never skips an event that committed late. `Follower` is the live part: one LISTEN connection on the inbox's
channel, which publishes and reads on every notification, and once more after every (re)connect, since NOTIFY
replays nothing that was sent while nobody listened.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, bindparam, exc, text

from models.database import CONNECT_ARGS, libpq_url
from models.event import CHANNEL
from resources import kinds

log = logging.getLogger("setpoint.events")

TYPES = {
    "Ready": "became ready, or ready at a new generation",
    "NotReady": "was ready and is no longer (health failing, a rollout under way)",
    "DriftCorrected": "something outside changed it, and it was put back (details.drift: what was done)",
    "Drifted": "paused, and the real thing differs (details.drift: what would be done)",
    "Failed": "a reconcile or teardown failed (once per failure, not per retry)",
    "Invalid": "the desired state cannot be applied as written",
    "Recovered": "was Failed or Invalid and reconciles again",
    "Waiting": "waits for a dependency",
    "NodeLost": "its node has gone silent",
    "Deleted": "its row is gone, and its real thing torn down (or orphaned)",
}
"""Every event type, with what it means."""

PAGE = 500
COLUMNS = "id, at, kind, name, uid, generation, type, reason, message, details"


@dataclasses.dataclass(frozen=True)
class Filter:
    """Which events a reader wants: any of `kinds`, any of `names`, any of `types` (empty: all)."""

    kinds: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    @classmethod
    def of(cls, kinds_: list[str] | None, names: list[str] | None, types: list[str] | None) -> Filter:
        """As users type them: kinds as `file`, `File` or `files` (UnknownKind otherwise), types by their names
        (ValueError naming the unknown one)."""
        unknown = [t for t in types or () if t not in TYPES]
        if unknown:
            raise ValueError(f"unknown event type {unknown[0]!r}: expected one of {', '.join(TYPES)}")
        found = tuple(dict.fromkeys(kinds.resolve(k).name for k in kinds_ or ()))
        return cls(found, tuple(dict.fromkeys(names or ())), tuple(dict.fromkeys(types or ())))

    def matches(self, event: Mapping[str, Any]) -> bool:
        return (
            (not self.kinds or event["kind"] in self.kinds)
            and (not self.names or event["name"] in self.names)
            and (not self.types or event["type"] in self.types)
        )

    def _where(self) -> str:
        clauses = [
            f"{column} IN :{column}s"
            for column, values in (("kind", self.kinds), ("name", self.names), ("type", self.types))
            if values
        ]
        return "".join(f" AND {clause}" for clause in clauses)

    def _params(self) -> dict[str, Any]:
        return {"kinds": list(self.kinds), "names": list(self.names), "types": list(self.types)}


EVERYTHING = Filter()


def _statement(sql: str, wanted: Filter) -> Any:
    """`sql` with the filter's clauses in place of {where}, its lists bound as IN lists."""
    statement = text(sql.format(where=wanted._where()))
    columns = {"kinds": wanted.kinds, "names": wanted.names, "types": wanted.types}
    return statement.bindparams(*(bindparam(key, expanding=True) for key, values in columns.items() if values))


def as_json(row: Any) -> dict[str, Any]:
    """An event as the API and `-o json` show it."""
    return {
        "id": row["id"],
        "at": row["at"].isoformat(),
        "kind": row["kind"],
        "name": row["name"],
        "uid": str(row["uid"]) if row["uid"] else None,
        "generation": row["generation"],
        "type": row["type"],
        "reason": row["reason"],
        "message": row["message"],
        "details": row["details"] or {},
    }


def publish(conn: Connection) -> int:
    """Number the inbox's waiting events (in its own transaction: commit follows); how many were published."""
    return int(conn.execute(text("SELECT setpoint_publish_events()")).scalar() or 0)


def head(engine: Engine) -> int:
    """The id of the newest published event (0 if none), after publishing what waits: a reader starting "from now"
    resumes after it."""
    with engine.begin() as conn:
        publish(conn)
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT COALESCE(max(id), 0) FROM events")).scalar() or 0)


_BOUNDS = text("""
SELECT (SELECT min(id) FROM events WHERE id > :after) AS next,
       (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_id_seq) AS given
""")


def gone(engine: Engine, after: int) -> str | None:
    """Why a reader cannot resume after event `after` without missing some, or None if it can: the event after it
    has been pruned (ids are handed out one after another, so a hole is a loss), or no event that high was ever
    numbered (the database was restored from a backup, or made anew: it would wait in silence for ids that may
    never come). Either way it must start again from now, after reading the current state (Kubernetes' 410 Gone)."""
    with engine.begin() as conn:
        publish(conn)  # and hold the publishers' lock to the end: no id is being handed out while we look
        bounds = conn.execute(_BOUNDS, {"after": after}).one()
    given = int(bounds.given)
    if after > given:
        return f"no event {after} was ever numbered here (the newest is {given}): the database was restored or reset"
    following = int(bounds.next) if bounds.next is not None else given + 1
    if after < given and following > after + 1:
        return f"the events after {after} up to {following - 1} are gone (pruned)"
    return None


def page(
    engine: Engine, after: int, wanted: Filter = EVERYTHING, limit: int = PAGE, upto: int | None = None
) -> list[dict[str, Any]]:
    """Up to `limit` published events with id above `after` (and at most `upto`), oldest first."""
    sql = "SELECT {columns} FROM events WHERE id > :after AND id <= :upto{{where}} ORDER BY id LIMIT :limit"
    statement = _statement(sql.format(columns=COLUMNS), wanted)
    with engine.connect() as conn:
        rows = conn.execute(
            statement,
            {"after": after, "upto": upto if upto is not None else 2**63 - 1, "limit": limit, **wanted._params()},
        )
        return [as_json(row) for row in rows.mappings()]


def recent(engine: Engine, wanted: Filter = EVERYTHING, limit: int = 100) -> list[dict[str, Any]]:
    """The newest `limit` events (after publishing what waits), newest last."""
    with engine.begin() as conn:
        publish(conn)
    sql = "SELECT {columns} FROM events WHERE true{{where}} ORDER BY id DESC LIMIT :limit"
    with engine.connect() as conn:
        rows = conn.execute(_statement(sql.format(columns=COLUMNS), wanted), {"limit": limit, **wanted._params()})
        return [as_json(row) for row in reversed(list(rows.mappings()))]


def since(
    engine: Engine, after: int, wanted: Filter = EVERYTHING, size: int = PAGE
) -> tuple[Iterator[list[dict[str, Any]]], int]:
    """Publish, then the events after `after` up to the newest one now, as pages of at most `size` read one at a
    time (a burst of 100,000 is never in memory at once), oldest first; and the new cursor (that newest id, even if
    the filter left it out: ids only grow, so nothing at or below it can still appear)."""
    newest = head(engine)
    return _pages(engine, after, wanted, size, newest), max(after, newest)


def _pages(engine: Engine, after: int, wanted: Filter, size: int, newest: int) -> Iterator[list[dict[str, Any]]]:
    cursor = after
    while cursor < newest:
        batch = page(engine, cursor, wanted, size, upto=newest)
        if batch:
            yield batch
        if len(batch) < size:
            return
        cursor = batch[-1]["id"]


class Follower:
    """Batches of new events as they are published, through one LISTEN connection (psycopg, autocommit)."""

    def __init__(
        self, database_url: str, engine: Engine, resync_s: float = 30.0, poll_s: float = 0.5, size: int = PAGE
    ) -> None:
        self._url = libpq_url(database_url)
        self._engine = engine
        self._size = size
        """Events read (and yielded) at a time."""
        self._resync_s = resync_s
        """Read even without a notification this often: a safety net, as the scheduler's interval is."""
        self._poll_s = poll_s
        """How often `stop` is looked at while waiting."""

    def batches(self, after: int, wanted: Filter, stop: threading.Event) -> Iterator[list[dict[str, Any]]]:
        """Each non-empty batch of events after `after` matching `wanted`, in id order, until `stop` is set; a lost
        connection is made again (and everything since the last event read is read then)."""
        cursor = after
        while not stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, **CONNECT_ARGS) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    idle_s = self._resync_s  # read at once: whatever came while nobody listened
                    while not stop.is_set():
                        if idle_s >= self._resync_s:
                            pages, newest = since(self._engine, cursor, wanted, self._size)
                            for batch in pages:
                                cursor = batch[-1]["id"]
                                yield batch
                            cursor = newest
                            idle_s = 0.0
                        woken = any(True for _ in conn.notifies(timeout=self._poll_s, stop_after=1))
                        idle_s = self._resync_s if woken else idle_s + self._poll_s
            except (psycopg.OperationalError, exc.OperationalError) as error:  # the server restarted, say
                log.warning("events listen connection lost", extra={"error": str(error).splitlines()[0]})
                stop.wait(1.0)
