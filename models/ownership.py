"""The SQL of ownership: resources that a controller (or an admin) made part of another, `owned_by = 'App/web'`.

As Kubernetes' owner references: deleting an owner deletes what it owns, at any depth, and the owner's own
teardown waits until all of it is gone (foreground deletion: the worker calls `setpoint_delete_owned` when it
reconciles the owner's tombstone, worker/runtime.py). An owner whose `deletion_policy` is 'orphan' leaves what
it owns in place, with `owned_by` cleared (or, if the owner was owned itself, given to the owner's owner), in the
statement that deletes it. An owned row edited by anyone else
(its generation changes), or deleted, makes its owner due at once, which puts it back; an owned resource that
becomes ready (or changes phase) or is torn down makes its owner due too, to report it or stop waiting for it.

Least privilege: the worker's role may write a kind's table, but row-level security lets it touch only rows
with `owned_by` set (a controller's own children), never the rows an admin wrote. Every other role keeps what
its GRANTs give it; the table's owner and superusers bypass row-level security.

Migration 0011 creates these and attaches them to every kind there is; `triggers.attach` and `triggers.grant`
call `attach` and `grant` for a kind created later.
"""

from __future__ import annotations

from models.triggers import CHANNEL

FUNCTIONS = f"""
CREATE FUNCTION setpoint_kind_tables() RETURNS TABLE (kind text, desired regclass) LANGUAGE sql STABLE AS $$
    SELECT convert_from(substring(t.tgargs FROM 1 FOR position('\\x00'::bytea IN t.tgargs) - 1), 'UTF8'),
           t.tgrelid::regclass
    FROM pg_trigger AS t
    WHERE t.tgfoid = 'setpoint_track'::regproc
$$;

-- What `p_owner` (Kind/name) owns, in every kind's table, as the caller may see it.
CREATE FUNCTION setpoint_owned(p_owner text) RETURNS TABLE (kind text, name text, desired jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k record;
BEGIN
    FOR k IN SELECT * FROM setpoint_kind_tables() ORDER BY 1 LOOP
        RETURN QUERY EXECUTE format(
            'SELECT %L::text, d.name::text, to_jsonb(d) FROM %s AS d WHERE d.owned_by = $1 ORDER BY d.name',
            k.kind, k.desired) USING p_owner;
    END LOOP;
END $$;

-- Foreground deletion, as the worker runs it for an owner being deleted: delete the rows it owns (those the
-- controller may have written since the owner's DELETE too), then say what it owns that is still being torn down.
CREATE FUNCTION setpoint_delete_owned(p_owner text) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    k record;
BEGIN
    FOR k IN SELECT * FROM setpoint_kind_tables() LOOP
        EXECUTE format('DELETE FROM %s WHERE owned_by = $1', k.desired) USING p_owner;
    END LOOP;
    RETURN ARRAY(SELECT s.kind || '/' || s.name FROM statuses AS s
                 WHERE s.deleted_at IS NOT NULL AND s.last_desired ->> 'owned_by' = p_owner ORDER BY 1);
END $$;

CREATE FUNCTION setpoint_own() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    k record;
    owner text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        owner := OLD.owned_by;
        -- What it owned stays: an admin's if it was top-level, else its own owner's (a controller's orphans are
        -- never made admin rows, which no controller could touch again).
        IF OLD.deletion_policy = 'orphan' THEN
            FOR k IN SELECT * FROM setpoint_kind_tables() LOOP
                EXECUTE format('UPDATE %s SET owned_by = $2 WHERE owned_by = $1', k.desired)
                    USING TG_ARGV[0] || '/' || OLD.name, OLD.owned_by;
            END LOOP;
        END IF;
    ELSE
        owner := NEW.owned_by;
    END IF;
    -- Edited or deleted by someone: its owner puts it back. The owner's own write wakes it once more, to find
    -- the row as it wants it and write nothing (clock_timestamp(): see setpoint_wake_dependents).
    IF owner IS NOT NULL THEN
        UPDATE statuses SET next_reconcile_at = clock_timestamp()
        WHERE kind = split_part(owner, '/', 1) AND name = substr(owner, strpos(owner, '/') + 1)
          AND deleted_at IS NULL;
        IF FOUND THEN
            PERFORM pg_notify('{CHANNEL}', '');
        END IF;
    END IF;
    RETURN NULL;
END $$;

-- An owned resource whose readiness or phase changed: its owner reports it at once. One torn down (its tombstone
-- goes): its owner may be waiting for it, or wants it back.
CREATE FUNCTION setpoint_wake_owner() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    desired regclass;
    owner text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        owner := OLD.last_desired ->> 'owned_by';
    ELSE
        SELECT k.desired INTO desired FROM setpoint_kind_tables() AS k WHERE k.kind = NEW.kind LIMIT 1;
        IF desired IS NOT NULL THEN
            EXECUTE format('SELECT owned_by FROM %s WHERE name = $1', desired) INTO owner USING NEW.name;
        END IF;
    END IF;
    IF owner IS NOT NULL THEN
        UPDATE statuses SET next_reconcile_at = clock_timestamp()
        WHERE kind = split_part(owner, '/', 1) AND name = substr(owner, strpos(owner, '/') + 1)
          AND (TG_OP = 'DELETE' OR deleted_at IS NULL);
        IF FOUND THEN
            PERFORM pg_notify('{CHANNEL}', '');
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER setpoint_wake_owner AFTER DELETE ON statuses FOR EACH ROW
    WHEN (OLD.last_desired ->> 'owned_by' IS NOT NULL)
    EXECUTE FUNCTION setpoint_wake_owner();
CREATE TRIGGER setpoint_wake_owner_of_ready AFTER UPDATE ON statuses FOR EACH ROW
    WHEN (NEW.deleted_at IS NULL AND (NEW.phase IS DISTINCT FROM OLD.phase
          OR COALESCE(NEW.ready AND NEW.observed_generation = NEW.generation, false)
             IS DISTINCT FROM COALESCE(OLD.ready AND OLD.observed_generation = OLD.generation, false)))
    EXECUTE FUNCTION setpoint_wake_owner();
"""
"""Created by migration 0011."""

AS_OWNER = ("setpoint_own()", "setpoint_wake_owner()")
"""Trigger functions run as their owner: whoever deletes an owner, or edits an owned row, needs no right on the
other kinds' tables or on statuses."""
WORKER_FUNCTIONS = ("setpoint_delete_owned(text)",)
"""Run as their owner, callable by the worker's role alone."""

DROP_FUNCTIONS = """
DROP TRIGGER IF EXISTS setpoint_wake_owner_of_ready ON statuses;
DROP TRIGGER IF EXISTS setpoint_wake_owner ON statuses;
DROP FUNCTION IF EXISTS setpoint_wake_owner();
DROP FUNCTION IF EXISTS setpoint_own();
DROP FUNCTION IF EXISTS setpoint_delete_owned(text);
DROP FUNCTION IF EXISTS setpoint_owned(text);
DROP FUNCTION IF EXISTS setpoint_kind_tables();
"""


def attach(table: str, kind: str) -> str:
    """The ownership triggers on a kind's table (part of triggers.attach), and the index that finds what an owner
    owns (CreateTable makes none). Before migration 0011 has run (its own migrations' time) the triggers are not
    made: 0011 attaches them to every kind there is."""
    return f"""
DO $$ BEGIN
    IF to_regproc('setpoint_own') IS NOT NULL THEN
        CREATE TRIGGER setpoint_own_edited AFTER UPDATE ON {table} FOR EACH ROW
            WHEN (NEW.owned_by IS NOT NULL AND NEW.generation <> OLD.generation)
            EXECUTE FUNCTION setpoint_own('{kind}');
        CREATE TRIGGER setpoint_own_deleted AFTER DELETE ON {table} FOR EACH ROW
            WHEN (OLD.owned_by IS NOT NULL OR OLD.deletion_policy = 'orphan')
            EXECUTE FUNCTION setpoint_own('{kind}');
        CREATE INDEX IF NOT EXISTS ix_{table}_owned_by ON {table} (owned_by);
    END IF;
END $$;
"""


def detach(table: str) -> str:
    return f"DROP INDEX IF EXISTS ix_{table}_owned_by;\n" + "".join(
        f"DROP TRIGGER IF EXISTS {trigger} ON {table};\n" for trigger in ("setpoint_own_deleted", "setpoint_own_edited")
    )


def grant(table: str) -> str:
    """Row-level security on a kind's table (part of triggers.grant): the worker's role may insert, update and
    delete rows that are owned (and keep them owned), and nothing else; everyone else keeps what GRANT gives.
    Before migration 0011 it does nothing."""
    return f"""
DO $$ BEGIN
    IF to_regproc('setpoint_own') IS NOT NULL THEN
        GRANT INSERT, UPDATE, DELETE ON {table} TO setpoint_worker;
        EXECUTE format('GRANT USAGE ON SEQUENCE %s TO setpoint_worker', pg_get_serial_sequence('{table}', 'id'));
        DROP POLICY IF EXISTS setpoint_granted ON {table};
        DROP POLICY IF EXISTS setpoint_worker_inserts_owned ON {table};
        DROP POLICY IF EXISTS setpoint_worker_updates_owned ON {table};
        DROP POLICY IF EXISTS setpoint_worker_deletes_owned ON {table};
        CREATE POLICY setpoint_granted ON {table} TO PUBLIC USING (true) WITH CHECK (true);
        CREATE POLICY setpoint_worker_inserts_owned ON {table} AS RESTRICTIVE FOR INSERT TO setpoint_worker
            WITH CHECK (owned_by IS NOT NULL);
        CREATE POLICY setpoint_worker_updates_owned ON {table} AS RESTRICTIVE FOR UPDATE TO setpoint_worker
            USING (owned_by IS NOT NULL) WITH CHECK (owned_by IS NOT NULL);
        CREATE POLICY setpoint_worker_deletes_owned ON {table} AS RESTRICTIVE FOR DELETE TO setpoint_worker
            USING (owned_by IS NOT NULL);
        ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
    END IF;
END $$;
"""


def revoke(table: str) -> str:
    """Undo grant() on a table that stays (triggers.revoke takes the worker's rights)."""
    return f"""
ALTER TABLE {table} DISABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS setpoint_granted ON {table};
DROP POLICY IF EXISTS setpoint_worker_inserts_owned ON {table};
DROP POLICY IF EXISTS setpoint_worker_updates_owned ON {table};
DROP POLICY IF EXISTS setpoint_worker_deletes_owned ON {table};
"""
