"""events: transitions worth knowing about, numbered in commit order

Table `event_inbox`: what the statuses triggers record, in the transaction that made the transition. Table
`events`: the same, published by setpoint_publish_events() (one publisher at a time), numbered from the sequence
events_id_seq in the order they committed, so a reader resuming after id N misses nothing (models/event.py).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 01:00:36.843215
"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel
from sqlalchemy.dialects import postgresql

from models import triggers

revision: str = "0017"
down_revision: Union[str, None] = "0016"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

PUBLISH = """
CREATE SEQUENCE events_id_seq AS bigint OWNED BY events.id;

CREATE FUNCTION setpoint_publish_events() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    moved bigint := 0;
    step bigint;
BEGIN
    -- One publisher at a time, so ids are handed out in the order the inbox rows became visible.
    PERFORM pg_advisory_xact_lock(hashtextextended('setpoint_publish_events', 0));
    -- Again until nothing is left: each statement sees what committed before it, among them the events of a writer
    -- that held one of these rows (setpoint_events_waiting) and so sent no notification of its own.
    LOOP
        WITH taken AS (DELETE FROM event_inbox RETURNING *)
        INSERT INTO events (id, at, kind, name, uid, generation, type, reason, message, details)
        SELECT nextval('events_id_seq'), t.at, t.kind, t.name, t.uid, t.generation, t.type, t.reason, t.message,
               t.details
        FROM (SELECT * FROM taken ORDER BY seq) AS t;
        GET DIAGNOSTICS step = ROW_COUNT;
        EXIT WHEN step = 0;
        moved := moved + step;
    END LOOP;
    RETURN moved;
END $$;

CREATE FUNCTION setpoint_events_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A NOTIFY makes every commit that sends one wait its turn (PostgreSQL's notification queue lock): one per
    -- reconcile that made an event cost a third of a mass rollout's throughput (measured). So say so only when no
    -- earlier event waits. An earlier one found is held (KEY SHARE) until this commits: a publisher deleting it
    -- waits for this commit, and its next round (setpoint_publish_events) takes these too. One being deleted
    -- already makes this wait, and then it is gone: this notifies, unless an even earlier one still waits.
    -- (On another table, such as webhooks whose change wakes the dispatcher, it always says so.)
    IF TG_TABLE_NAME = 'event_inbox' THEN
        PERFORM 1 FROM event_inbox AS i WHERE i.seq < (SELECT min(a.seq) FROM added AS a)
            ORDER BY i.seq DESC LIMIT 1 FOR KEY SHARE;
    END IF;
    IF TG_TABLE_NAME <> 'event_inbox' OR NOT FOUND THEN
        PERFORM pg_notify('setpoint_events', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER setpoint_events_waiting AFTER INSERT ON event_inbox REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION setpoint_events_waiting();

GRANT SELECT ON events TO setpoint_api, setpoint_scheduler;
-- how far numbering went: a reader resuming after an id it was never given (a restore) is told so (410 Gone)
GRANT SELECT ON SEQUENCE events_id_seq TO setpoint_api, setpoint_scheduler;
GRANT DELETE ON events TO setpoint_scheduler;
"""
"""Readers (the API's event stream, the webhook dispatcher, `setpoint events`) call setpoint_publish_events() before
reading; it runs as its owner, so they need no right on the inbox."""

SIGNATURES = ("setpoint_publish_events()",)

EMIT = """
CREATE FUNCTION setpoint_status_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    said jsonb;          -- the Ready condition this write leaves
    was jsonb;           -- the Ready condition it replaces
    happened text;       -- the event's type, if this write is news
    why text;
    message text;
    details jsonb := '{}';
    moved boolean;       -- a new generation observed
    reason_moved boolean;
    done jsonb;
    last jsonb;          -- the resource's last event
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO event_inbox (kind, name, uid, generation, type, reason, message)
        VALUES (OLD.kind, OLD.name, OLD.uid, OLD.generation, 'Deleted',
                CASE WHEN OLD.deleted_at IS NOT NULL THEN 'TornDown' ELSE 'Orphaned' END,
                CASE WHEN OLD.deleted_at IS NOT NULL THEN 'deleted: torn down'
                     ELSE 'deleted: its real thing is left as it is' END);
        RETURN NULL;
    END IF;
    said := (SELECT c FROM jsonb_array_elements(NEW.conditions) AS c WHERE c->>'type' = 'Ready' LIMIT 1);
    was := (SELECT c FROM jsonb_array_elements(OLD.conditions) AS c WHERE c->>'type' = 'Ready' LIMIT 1);
    why := said->>'reason';
    message := said->>'message';
    moved := NEW.observed_generation IS DISTINCT FROM OLD.observed_generation;
    reason_moved := why IS DISTINCT FROM was->>'reason';
    IF why = 'NodeLost' THEN
        IF reason_moved THEN
            happened := 'NodeLost';
        END IF;
    ELSIF NEW.deleted_at IS NOT NULL THEN
        -- being torn down: its end is Deleted; a teardown failing (once per reason) is news
        IF NEW.last_error IS NOT NULL AND (OLD.last_error IS NULL OR reason_moved) THEN
            happened := 'Failed';
            message := 'teardown failed: ' || NEW.last_error;
        END IF;
    ELSIF NEW.phase IN ('Invalid', 'Failed') THEN
        -- once per failure: not again for each retry, unless it fails otherwise or at another generation
        IF OLD.phase IS DISTINCT FROM NEW.phase OR moved OR reason_moved THEN
            happened := NEW.phase;
            message := COALESCE(NEW.last_error, message);
        END IF;
    ELSIF OLD.phase IN ('Failed', 'Invalid') AND NEW.last_reconcile_at IS DISTINCT FROM OLD.last_reconcile_at THEN
        happened := 'Recovered';
        message := 'recovered: ' || message;
    ELSIF NEW.phase = 'Waiting' THEN
        IF OLD.phase IS DISTINCT FROM 'Waiting' OR moved OR reason_moved THEN
            happened := 'Waiting';
        END IF;
    ELSIF NEW.phase = 'Drifted' THEN
        -- paused (or held) with drift: found, left uncorrected
        IF OLD.phase IS DISTINCT FROM 'Drifted' OR NEW.drift IS DISTINCT FROM OLD.drift THEN
            happened := 'Drifted';
            details := jsonb_build_object('drift', NEW.drift);
        END IF;
    ELSIF NEW.ready THEN
        IF NOT OLD.ready OR moved THEN
            happened := 'Ready';
        ELSIF why = 'Applied' AND NEW.last_reconcile_at IS DISTINCT FROM OLD.last_reconcile_at THEN
            -- acted at a generation already in sync: something outside changed it. What it found different is what
            -- it did (the plan's actions); the drift column holds what is left after them (usually nothing).
            happened := 'DriftCorrected';
            done := (SELECT r.actions FROM runs AS r
                     WHERE r.kind = NEW.kind AND r.name = NEW.name AND r.finished_at = NEW.last_reconcile_at
                     ORDER BY r.started_at DESC LIMIT 1);
            IF done IS NULL OR jsonb_typeof(done) <> 'array' THEN
                done := jsonb_build_array(substring(message FROM 'applied: (.*)$'));
            END IF;
            details := jsonb_build_object('drift',
                (SELECT COALESCE(jsonb_agg(jsonb_build_object('change', a.value)), '[]'::jsonb)
                 FROM jsonb_array_elements_text(done) AS a));
            message := 'drift corrected: ' || (SELECT string_agg(a, '; ') FROM jsonb_array_elements_text(done) AS a);
        END IF;
    ELSIF OLD.ready OR (NEW.phase = 'Degraded' AND OLD.phase IS DISTINCT FROM 'Degraded') THEN
        happened := 'NotReady';
    END IF;
    IF happened = 'NotReady' AND NOT OLD.ready THEN
        -- a crash loop goes Degraded, Progressing (a restart), Degraded again: said once, not at every restart
        last := COALESCE(
            (SELECT to_jsonb(i) FROM event_inbox AS i WHERE i.kind = NEW.kind AND i.name = NEW.name
             ORDER BY i.seq DESC LIMIT 1),
            (SELECT to_jsonb(e) FROM events AS e WHERE e.kind = NEW.kind AND e.name = NEW.name
             ORDER BY e.id DESC LIMIT 1));
        IF last->>'type' = 'NotReady' AND last->>'reason' IS NOT DISTINCT FROM why
           AND (last->>'generation')::int IS NOT DISTINCT FROM COALESCE(NEW.observed_generation, NEW.generation) THEN
            happened := NULL;
        END IF;
    END IF;
    IF happened IS NULL THEN
        RETURN NULL;
    END IF;
    -- bounded: a message of at most 1,000 characters, at most 20 drift entries of 300 (a controller's action
    -- may quote what it writes)
    IF details ? 'drift' THEN
        details := jsonb_build_object('drift', (
            SELECT COALESCE(jsonb_agg(jsonb_build_object('change', left(d.value->>'change', 300)) ORDER BY d.n),
                            '[]'::jsonb)
            FROM jsonb_array_elements(details->'drift') WITH ORDINALITY AS d(value, n) WHERE d.n <= 20));
    END IF;
    INSERT INTO event_inbox (kind, name, uid, generation, type, reason, message, details)
    VALUES (NEW.kind, NEW.name, NEW.uid, COALESCE(NEW.observed_generation, NEW.generation), happened,
            left(why, 128), left(COALESCE(message, happened), 1000), details);
    RETURN NULL;
END $$;

CREATE TRIGGER setpoint_status_event AFTER UPDATE ON statuses FOR EACH ROW
    -- false for a routine no-op reconcile (it rewrites every column with the same values but its times), so
    -- the hot path pays the comparison and nothing more. A reconcile that acted (reason `Applied`) is news even
    -- when its conditions repeat the last ones word for word (the same drift corrected twice in a row); other
    -- writes of the row (a claim, a pick) leave last_reconcile_at alone
    WHEN (OLD.phase IS DISTINCT FROM NEW.phase OR OLD.ready IS DISTINCT FROM NEW.ready
          OR OLD.observed_generation IS DISTINCT FROM NEW.observed_generation
          OR OLD.conditions IS DISTINCT FROM NEW.conditions
          OR (NEW.conditions -> 0 ->> 'reason' = 'Applied'
              AND OLD.last_reconcile_at IS DISTINCT FROM NEW.last_reconcile_at))
    EXECUTE FUNCTION setpoint_status_event();
CREATE TRIGGER setpoint_status_deleted AFTER DELETE ON statuses FOR EACH ROW
    EXECUTE FUNCTION setpoint_status_event();
"""
"""One event per transition a person would want to know about, written in the transaction that made it, whoever
wrote the status (a worker's reconcile, the scheduler's NodeLost, a teardown's end)."""

EMIT_SIGNATURES = ("setpoint_status_event()",)


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    op.create_table(
        "event_inbox",
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
        sa.Column("uid", sa.Uuid(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=True),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column(
            "details", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_event_inbox")),
    )
    op.create_table(
        "events",
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
        sa.Column("uid", sa.Uuid(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=True),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column(
            "details", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_at", "events", ["at"], unique=False)
    op.create_index("ix_events_resource", "events", ["kind", "name", "id"], unique=False)
    # ### end Alembic commands ###
    op.execute(PUBLISH)
    op.execute(triggers.as_owner(SIGNATURES, "setpoint_api"))
    op.execute("GRANT EXECUTE ON FUNCTION setpoint_publish_events() TO setpoint_scheduler")
    op.execute(EMIT)
    # It writes the inbox (and reads runs) for whoever changed the status: the workers' and the scheduler's
    # roles need no right on either.
    op.execute(triggers.as_owner(EMIT_SIGNATURES, None))


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS setpoint_status_event ON statuses")
    op.execute("DROP TRIGGER IF EXISTS setpoint_status_deleted ON statuses")
    op.execute(triggers.drop_functions(EMIT_SIGNATURES))
    op.execute("DROP TRIGGER IF EXISTS setpoint_events_waiting ON event_inbox")
    op.execute("DROP FUNCTION IF EXISTS setpoint_events_waiting()")
    op.execute(triggers.drop_functions(SIGNATURES))
    op.execute("REVOKE ALL ON events FROM setpoint_api, setpoint_scheduler")
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_index("ix_events_resource", table_name="events")
    op.drop_index("ix_events_at", table_name="events")
    op.drop_table("events")
    op.drop_table("event_inbox")
    # ### end Alembic commands ###
