"""The two statements a reconcile sends to PostgreSQL: one to lock and read, one to record and unlock.

The lock is a session advisory lock on the connection the reconcile holds: if the worker dies at any
line, PostgreSQL ends the session and the lock with it, so a killed reconcile never leaves its resource
locked. Reading the status row through an UPDATE (which stamps `picked_at`) waits for any write still
in flight for that row, so a reconcile always starts from the last one's committed record.
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError

from models.policy import unclaimed
from worker import needs
from worker.outcome import StatusUpdate

LOCK_KEY = "hashtextextended(:kind || '/' || :name, 0)"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What one reconcile starts from: whether it holds the lock, the desired row and the status row."""

    locked: bool
    desired: dict[str, Any] | None
    status: dict[str, Any] | None
    needs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The resources it depends on (worker/needs.py), each with whether it is ready and its outputs."""
    dependents: list[str] = dataclasses.field(default_factory=list)
    """The resources (Kind/name) that depend on it, deleting ones included: it is torn down after them."""
    rollout_waits: bool = False
    """Its message was claimed before the change it would apply, and a rollout policy holds it: hand it back."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    uid: str | None
    """The resource's uid, from the status row the reconcile read: which life of the name the run was for."""
    generation: int | None
    started_at: datetime
    finished_at: datetime
    outcome: str
    actions: list[str]
    error: str | None
    worker: str | None
    task_id: str | None
    attempt: int

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at).total_seconds() * 1000


_BEGIN = """
WITH lock AS (
    SELECT pg_try_advisory_lock({lock_key}) AS locked,
           -- picked_at is a hint for finding lost messages: its commit need not wait for the disk
           set_config('synchronous_commit', 'off', true) AS relaxed
),
picked AS (
    UPDATE statuses SET picked_at = now()
    WHERE kind = :kind AND name = :name AND (SELECT locked FROM lock)
    RETURNING to_jsonb(statuses.*) AS status,
              -- claimed before the change it would now apply: a rollout policy, if one holds it, says when
              CASE WHEN {unclaimed} THEN setpoint_in_rollout(kind, labels) ELSE false END AS rollout_waits
)
SELECT (SELECT locked FROM lock) AS locked,
       (SELECT to_jsonb(d) FROM {table} AS d WHERE d.name = :name) AS desired,
       (SELECT status FROM picked) AS status,
       COALESCE((SELECT rollout_waits FROM picked), false) AS rollout_waits,
       ({needs}) AS needs,
       ({dependents}) AS dependents
"""


@functools.cache
def _begin_statement(table: str) -> TextClause:
    """Built once per kind: a reconcile's hot path compiles nothing."""
    return text(
        _BEGIN.format(
            lock_key=LOCK_KEY, table=table, needs=needs.SELECT, dependents=_DEPENDENTS, unclaimed=unclaimed("statuses")
        )
    )


_DEPENDENTS = """SELECT jsonb_agg(d.kind || '/' || d.name ORDER BY d.kind, d.name)
        FROM dependencies AS d WHERE d.on_kind = :kind AND d.on_name = :name"""
_LINKS = text(f"SELECT ({needs.SELECT}) AS needs, ({_DEPENDENTS}) AS dependents")


def begin(conn: Connection, table: str, kind: str, name: str) -> Snapshot:
    """Lock and read. A resource whose links matter now reads them once more, in a statement of its own: the first one's
    snapshot may predate a dependency's change whose wake-up it then waited for on the status row's lock (and so
    would never see it, nor be woken again)."""
    row = conn.execute(_begin_statement(table), {"kind": kind, "name": name}).one()
    found, dependents = row.needs or [], row.dependents or []
    # What it acts on depends on its needs; a teardown (no desired row) on its dependents: only those matter.
    if row.locked and (dependents if row.desired is None else found):
        again = conn.execute(_LINKS, {"kind": kind, "name": name}).one()
        found, dependents = again.needs or [], again.dependents or []
    return Snapshot(bool(row.locked), row.desired, row.status, found, dependents, bool(row.rollout_waits))


_HAND_BACK = text("""UPDATE statuses SET enqueued_at = NULL, next_reconcile_at = LEAST(next_reconcile_at, now())
WHERE kind = :kind AND name = :name AND claim = :claim""")


def hand_back(conn: Connection, kind: str, name: str, claim: int) -> None:
    """Free this message's claim and make the resource due now: the scheduler's claim starts its change when the
    rollout has a slot for it (nothing was acted on)."""
    conn.execute(_HAND_BACK, {"kind": kind, "name": name, "claim": claim})


def unlock(conn: Connection, kind: str, name: str) -> None:
    conn.execute(text(f"SELECT pg_advisory_unlock({LOCK_KEY})"), {"kind": kind, "name": name})


_RUN = """INSERT INTO runs (kind, name, uid, generation, started_at, finished_at, duration_ms, outcome, actions,
                     error, worker, task_id, attempt)
     VALUES (:kind, :name, CAST(:uid AS uuid), :generation, :started_at, :finished_at, :duration_ms, :outcome, :actions,
             :error, :worker, :task_id, :attempt)"""

_WAITED = """
            -- we waited for dependencies that are all ready by now (their wake-up came before we started)
            WHEN NOT EXISTS (
                SELECT FROM dependencies AS d LEFT JOIN statuses AS n ON n.kind = d.on_kind AND n.name = d.on_name
                WHERE d.kind = :kind AND d.name = :name AND NOT COALESCE(
                    n.ready AND n.observed_generation = n.generation AND n.deleted_at IS NULL, false)
                  -- a secret has no status: it is ready once it exists (worker/needs.py)
                  AND NOT (d.on_kind = 'Secret' AND EXISTS (SELECT FROM secrets AS k WHERE k.name = d.on_name)))
            THEN now()"""
"""Only in the statement of a reconcile that waited for its dependencies: in every other one, the subquery would
cost about a tenth of a millisecond of the database's CPU for nothing (measured), a third of a no-op's record."""

_FINISH = """
WITH status AS (
    UPDATE statuses SET
        observed_generation = :observed_generation, ready = :ready,
        phase = CASE WHEN deleted_at IS NOT NULL THEN 'Deleting' ELSE :phase END,
        -- ready at the generation its rollout started for: done, it no longer holds a slot of max_unready
        rollout_started_at = CASE WHEN :ready AND generation = :observed_generation AND deleted_at IS NULL
                                  THEN NULL ELSE rollout_started_at END,
        conditions = :conditions, observed = :observed, drift = :drift, outputs = COALESCE(:outputs, outputs),
        consecutive_failures = :consecutive_failures, last_error = :last_error,
        last_reconcile_at = :finished_at, last_success_at = :last_success_at,
        interval_seconds = :interval_seconds,
        -- a change or a delete that landed while we worked is reconciled at once, not next period;
        -- the due time is the database's clock plus an offset, so worker clocks never matter
        next_reconcile_at = CASE
            WHEN generation IS DISTINCT FROM :observed_generation OR (deleted_at IS NOT NULL AND NOT :deleting)
            THEN now()
            -- made due while we worked (a dependency became ready, a dependent went): that look is still owed
            WHEN next_reconcile_at > picked_at THEN now()
            {waited}
            ELSE now() + make_interval(secs => :next_in_s) END,
        -- only the message holding the current claim frees it; an older or hand-sent one must not
        enqueued_at = CASE WHEN :release_claim AND claim = :claim THEN NULL ELSE enqueued_at END
    -- what a reconcile of one life of the name found is never written into another's status
    WHERE kind = :kind AND name = :name AND uid = CAST(:uid AS uuid)
), run AS ({run})
SELECT pg_advisory_unlock({lock_key})
"""

# The worker's role may not delete status rows: setpoint_teardown_done deletes only a tombstone.
_FINISH_DELETE = f"""
WITH run AS ({_RUN})
SELECT setpoint_teardown_done(:kind, :name), pg_advisory_unlock({LOCK_KEY})
"""

_JSON = ("conditions", "observed", "drift", "outputs", "actions")
# A failed run publishes no outputs (None): SQL NULL, so COALESCE keeps the last ones, not JSON null over them.
_FINISH_STATEMENT, _FINISH_WAITED_STATEMENT = (
    text(_FINISH.format(waited=waited, run=_RUN, lock_key=LOCK_KEY)).bindparams(
        *(bindparam(k, type_=JSONB(none_as_null=k == "outputs")) for k in _JSON)
    )
    for waited in ("", _WAITED)
)
_FINISH_DELETE_STATEMENT = text(_FINISH_DELETE).bindparams(bindparam("actions", type_=JSONB))


def _fields(value: Any) -> dict[str, Any]:
    """A dataclass's fields, without dataclasses.asdict's deep copy of every list and dict."""
    return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}


def finish(
    conn: Connection,
    kind: str,
    name: str,
    claim: int | None,
    update: StatusUpdate | None,
    run: RunRecord,
    *,
    deleting: bool,
) -> None:
    """Record the run and the new status (with update None: forget the torn-down resource), then unlock."""
    params: dict[str, Any] = {"kind": kind, "name": name, "claim": claim, "deleting": deleting}
    params.update(_fields(run), duration_ms=run.duration_ms)
    statement = _FINISH_DELETE_STATEMENT
    if update is not None:
        params.update(_fields(update))
        params.pop("waiting")
        statement = _FINISH_WAITED_STATEMENT if update.waiting else _FINISH_STATEMENT
    conn.execute(statement, params)


def back_off(conn: Connection, kind: str, name: str, seconds: float) -> None:
    """A target asked this resource to come back in `seconds` (a rate limit): every policy whose scope holds it backs
    off as a whole until then (models/policy.py), so its siblings do not hit the same limit one by one."""
    conn.execute(
        text("SELECT setpoint_back_off(:kind, :name, :seconds)"), {"kind": kind, "name": name, "seconds": seconds}
    )


def forget(conn: Connection, kind: str, name: str) -> None:
    """Drop a status row that has neither a desired row nor a tombstone behind it (the function checks both)."""
    conn.execute(text("SELECT setpoint_forget_orphan(:kind, :name)"), {"kind": kind, "name": name})


def delete_owned(conn: Connection, kind: str, name: str) -> list[str]:
    """Delete the rows a resource being torn down owns; what it owns that is still being torn down (Kind/name)."""
    # The function runs as its owner: the worker's role may not delete desired rows itself.
    left = conn.execute(text("SELECT setpoint_delete_owned(:owner)"), {"owner": f"{kind}/{name}"}).scalar()
    return list(left or [])


def pin(conn: Connection, kind: str, name: str, node: str) -> None:
    """Keep a host-local resource with this worker's node from now on; a resource already on a node stays there."""
    # The node's watcher hears it and starts watching the resource (worker/watches.py).
    conn.execute(
        text("SELECT setpoint_pin_node(:kind, :name, :node), pg_notify('setpoint_watch', '')"),
        {"kind": kind, "name": name, "node": node},
    )


_HOLDS_LOCK = text(f"""
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 1
      AND classid = (({LOCK_KEY} >> 32) & 4294967295)::oid
      AND objid = ({LOCK_KEY} & 4294967295)::oid)
""")


def holds_lock(conn: Connection, kind: str, name: str) -> bool:
    """Whether this session still holds the resource's lock: False once the database has ended the session (or
    the connection is gone), when another worker may already be reconciling the same resource."""
    try:
        return bool(conn.execute(_HOLDS_LOCK, {"kind": kind, "name": name}).scalar())
    except DBAPIError:
        return False


def record_unknown_kind(conn: Connection, kind: str, name: str, message: str, retry_in_s: float) -> None:
    """A resource whose kind no worker knows: say so in status, and look again later."""
    conn.execute(
        text("""
UPDATE statuses SET ready = false, phase = 'Failed', last_error = :message,
    conditions = jsonb_build_array(jsonb_build_object('type', 'Ready', 'status', 'False', 'reason', 'UnknownKind',
        'message', :message, 'last_transition_time', now())),
    consecutive_failures = consecutive_failures + 1, last_reconcile_at = now(),
    next_reconcile_at = now() + make_interval(secs => :retry_in_s), enqueued_at = NULL
WHERE kind = :kind AND name = :name
"""),
        {"kind": kind, "name": name, "message": message, "retry_in_s": retry_in_s},
    )
