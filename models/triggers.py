"""The SQL that makes a table a kind: generation bumps, status rows, tombstones and the scheduler's wake-up.

Autogenerate cannot see functions, triggers and grants, so migrations call these by hand. A new kind's
migration runs `op.execute(triggers.attach("files", "File"))` and then `op.execute(triggers.grant("files"))`,
so the database roles of migration 0003 may use the table; its downgrade runs `triggers.detach(...)` (dropping
the table drops its grants). The table's `uid` column comes from models.base.Resource with CreateTable; migration
0008 added it to every table attached before it, users' kinds included.
"""

from __future__ import annotations

CHANNEL = "setpoint_wake"
"""The NOTIFY channel the scheduler listens on. The payload is empty on purpose: PostgreSQL folds
identical notifications in one transaction, so an UPDATE of 100,000 rows wakes the scheduler once."""

BOOKKEEPING = "ARRAY['id', 'generation', 'created_at', 'updated_at']"

FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION setpoint_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.generation := 1;
        NEW.created_at := now();
        NEW.updated_at := now();
        RETURN NEW;
    END IF;
    IF NEW.name IS DISTINCT FROM OLD.name THEN
        RAISE EXCEPTION 'name is immutable: % % cannot become %', TG_ARGV[0], OLD.name, NEW.name
            USING ERRCODE = 'check_violation', HINT = 'Delete the row and insert a new one instead.';
    END IF;
    IF (to_jsonb(NEW) ->> 'node') IS DISTINCT FROM (to_jsonb(OLD) ->> 'node') THEN
        RAISE EXCEPTION 'node is immutable: % % stays on %', TG_ARGV[0], OLD.name, to_jsonb(OLD) ->> 'node'
            USING ERRCODE = 'check_violation', HINT = 'Delete the row and insert it with the new node.';
    END IF;
    NEW.id := OLD.id;
    NEW.created_at := OLD.created_at;
    IF (to_jsonb(NEW) - {BOOKKEEPING}) IS DISTINCT FROM (to_jsonb(OLD) - {BOOKKEEPING}) THEN
        NEW.generation := OLD.generation + 1;
        NEW.updated_at := now();
    ELSE
        NEW.generation := OLD.generation;
        NEW.updated_at := OLD.updated_at;
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION setpoint_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.deletion_policy = 'orphan' THEN
            DELETE FROM statuses WHERE kind = TG_ARGV[0] AND name = OLD.name;
        ELSE
            UPDATE statuses SET deleted_at = now(), last_desired = to_jsonb(OLD), phase = 'Deleting',
                ready = false, consecutive_failures = 0, next_reconcile_at = now()
            WHERE kind = TG_ARGV[0] AND name = OLD.name;
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.generation = OLD.generation THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' AND EXISTS (SELECT 1 FROM statuses
            WHERE kind = TG_ARGV[0] AND name = NEW.name AND deleted_at IS NOT NULL) THEN
        RAISE EXCEPTION '% % is still being deleted', TG_ARGV[0], NEW.name
            USING ERRCODE = 'unique_violation',
                  HINT = 'Insert it again once its teardown has finished (its row is gone from statuses).';
    END IF;
    -- A new or changed desired state: due now, with a clean slate of failures (it may fix them).
    INSERT INTO statuses (kind, name, generation, phase, next_reconcile_at, interval_seconds, node)
    VALUES (TG_ARGV[0], NEW.name, NEW.generation, 'Pending', now(), NEW.interval_seconds, to_jsonb(NEW) ->> 'node')
    ON CONFLICT (kind, name) DO UPDATE SET
        generation = EXCLUDED.generation, next_reconcile_at = now(), consecutive_failures = 0,
        interval_seconds = COALESCE(EXCLUDED.interval_seconds, statuses.interval_seconds),
        node = COALESCE(EXCLUDED.node, statuses.node);  -- a host-local resource stays where it was pinned
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION setpoint_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END $$;
"""

"""The trigger functions as migration 0001 made them; migration 0008 replaces two of them (IDENTITY_FUNCTIONS),
and its downgrade puts these back."""

IDENTITY_FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION setpoint_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.uid := gen_random_uuid();  -- whatever was given: an old uid inserted again would be a stolen life
        NEW.generation := 1;
        NEW.created_at := now();
        NEW.updated_at := now();
        RETURN NEW;
    END IF;
    IF NEW.name IS DISTINCT FROM OLD.name THEN
        RAISE EXCEPTION 'name is immutable: % % cannot become %', TG_ARGV[0], OLD.name, NEW.name
            USING ERRCODE = 'check_violation', HINT = 'Delete the row and insert a new one instead.';
    END IF;
    IF NEW.uid IS DISTINCT FROM OLD.uid THEN
        RAISE EXCEPTION 'uid is immutable: % % keeps uid %', TG_ARGV[0], OLD.name, OLD.uid
            USING ERRCODE = 'check_violation', HINT = 'A uid is assigned at INSERT and lasts as long as the row.';
    END IF;
    IF (to_jsonb(NEW) ->> 'node') IS DISTINCT FROM (to_jsonb(OLD) ->> 'node') THEN
        RAISE EXCEPTION 'node is immutable: % % stays on %', TG_ARGV[0], OLD.name, to_jsonb(OLD) ->> 'node'
            USING ERRCODE = 'check_violation', HINT = 'Delete the row and insert it with the new node.';
    END IF;
    NEW.id := OLD.id;
    NEW.created_at := OLD.created_at;
    IF (to_jsonb(NEW) - {BOOKKEEPING}) IS DISTINCT FROM (to_jsonb(OLD) - {BOOKKEEPING}) THEN
        NEW.generation := OLD.generation + 1;
        NEW.updated_at := now();
    ELSE
        NEW.generation := OLD.generation;
        NEW.updated_at := OLD.updated_at;
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION setpoint_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.deletion_policy = 'orphan' THEN
            DELETE FROM statuses WHERE kind = TG_ARGV[0] AND name = OLD.name AND uid = OLD.uid;
        ELSE
            UPDATE statuses SET deleted_at = now(), last_desired = to_jsonb(OLD), phase = 'Deleting',
                ready = false, consecutive_failures = 0, next_reconcile_at = now()
            WHERE kind = TG_ARGV[0] AND name = OLD.name AND uid = OLD.uid;
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.generation = OLD.generation THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF EXISTS (SELECT 1 FROM statuses
                WHERE kind = TG_ARGV[0] AND name = NEW.name AND deleted_at IS NOT NULL) THEN
            RAISE EXCEPTION '% % is still being deleted', TG_ARGV[0], NEW.name
                USING ERRCODE = 'unique_violation',
                      HINT = 'Insert it again once its teardown has finished (its row is gone from statuses).';
        END IF;
        -- A status an earlier life of the name left without a row or tombstone (a TRUNCATE) says nothing of this one.
        DELETE FROM statuses WHERE kind = TG_ARGV[0] AND name = NEW.name AND uid <> NEW.uid;
    END IF;
    -- A new or changed desired state: due now, with a clean slate of failures (it may fix them).
    INSERT INTO statuses (kind, name, uid, generation, phase, next_reconcile_at, interval_seconds, node)
    VALUES (TG_ARGV[0], NEW.name, NEW.uid, NEW.generation, 'Pending', now(), NEW.interval_seconds,
            to_jsonb(NEW) ->> 'node')
    ON CONFLICT (kind, name) DO UPDATE SET
        generation = EXCLUDED.generation, next_reconcile_at = now(), consecutive_failures = 0,
        interval_seconds = COALESCE(EXCLUDED.interval_seconds, statuses.interval_seconds),
        node = COALESCE(EXCLUDED.node, statuses.node);  -- a host-local resource stays where it was pinned
    RETURN NULL;
END $$;
"""
"""Since migration 0008 every resource has a `uid`, assigned by the database at INSERT and immutable, copied
into its status row (which its tombstone keeps) and from there into every run: a name deleted and used again
is another resource, whose status and history start empty."""

LABELS_FUNCTIONS = """
CREATE OR REPLACE FUNCTION setpoint_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.deletion_policy = 'orphan' THEN
            DELETE FROM statuses WHERE kind = TG_ARGV[0] AND name = OLD.name AND uid = OLD.uid;
        ELSE
            UPDATE statuses SET deleted_at = now(), last_desired = to_jsonb(OLD), phase = 'Deleting',
                ready = false, consecutive_failures = 0, next_reconcile_at = now()
            WHERE kind = TG_ARGV[0] AND name = OLD.name AND uid = OLD.uid;
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.generation = OLD.generation THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF EXISTS (SELECT 1 FROM statuses
                WHERE kind = TG_ARGV[0] AND name = NEW.name AND deleted_at IS NOT NULL) THEN
            RAISE EXCEPTION '% % is still being deleted', TG_ARGV[0], NEW.name
                USING ERRCODE = 'unique_violation',
                      HINT = 'Insert it again once its teardown has finished (its row is gone from statuses).';
        END IF;
        -- A status an earlier life of the name left without a row or tombstone (a TRUNCATE) says nothing of this one.
        DELETE FROM statuses WHERE kind = TG_ARGV[0] AND name = NEW.name AND uid <> NEW.uid;
    END IF;
    -- A new or changed desired state: due now, with a clean slate of failures (it may fix them).
    INSERT INTO statuses (kind, name, uid, generation, phase, next_reconcile_at, interval_seconds, node, labels)
    VALUES (TG_ARGV[0], NEW.name, NEW.uid, NEW.generation, 'Pending', now(), NEW.interval_seconds,
            to_jsonb(NEW) ->> 'node', COALESCE(to_jsonb(NEW) -> 'labels', '{}'))
    ON CONFLICT (kind, name) DO UPDATE SET
        generation = EXCLUDED.generation, next_reconcile_at = now(), consecutive_failures = 0,
        labels = EXCLUDED.labels,
        interval_seconds = COALESCE(EXCLUDED.interval_seconds, statuses.interval_seconds),
        node = COALESCE(EXCLUDED.node, statuses.node);  -- a host-local resource stays where it was pinned
    RETURN NULL;
END $$;
"""
"""Since migration 0019 (policies) setpoint_track also copies the desired row's labels into its status, so the
scheduler's claim matches policies' selectors on statuses alone, without a join to each kind's table."""

DROP_FUNCTIONS = """
DROP FUNCTION IF EXISTS setpoint_wake();
DROP FUNCTION IF EXISTS setpoint_track();
DROP FUNCTION IF EXISTS setpoint_stamp();
"""


def attach(table: str, kind: str, templated: tuple[str, ...] = (), secret_fields: tuple[str, ...] = ()) -> str:
    """The triggers that make `table` a kind named `kind` (run after creating the table), with the links of
    models/links.py: `templated` names the fields whose strings may reference other resources' outputs and
    secrets, `secret_fields` those holding a secret's name."""
    from models import change, links, ownership

    return (
        links.attach(table, kind, templated, secret_fields)
        + ownership.attach(table, kind)
        + change.attach(table, kind)
        + f"""
CREATE TRIGGER setpoint_stamp BEFORE INSERT OR UPDATE ON {table}
    FOR EACH ROW EXECUTE FUNCTION setpoint_stamp('{kind}');
CREATE TRIGGER setpoint_track AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION setpoint_track('{kind}');
CREATE TRIGGER setpoint_wake AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION setpoint_wake();
"""
    )


def detach(table: str) -> str:
    """Undo attach(): drop the kind's triggers (its statuses stay until their rows are gone)."""
    from models import change, links, ownership

    return (
        links.detach(table)
        + ownership.detach(table)
        + change.detach(table)
        + "".join(
            f"DROP TRIGGER IF EXISTS {trigger} ON {table};\n"
            for trigger in ("setpoint_wake", "setpoint_track", "setpoint_stamp")
        )
    )


def grant(table: str) -> str:
    """The roles' rights on a kind's table (run after attach()): the API changes desired state; workers and
    the scheduler only read it. The status rows follow through setpoint_track, which runs as its owner. Since
    migration 0011 the worker may also write the rows a controller owns, and those alone (models/ownership.py)."""
    from models import ownership

    return f"""
GRANT SELECT ON {table} TO setpoint_worker, setpoint_scheduler;
GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO setpoint_api;
DO $$ BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO setpoint_api', pg_get_serial_sequence('{table}', 'id'));
END $$;
""" + ownership.grant(table)


def revoke(table: str) -> str:
    """Undo grant() on a table that stays."""
    from models import ownership

    return (
        ownership.revoke(table)
        + f"""
REVOKE ALL ON {table} FROM setpoint_worker, setpoint_scheduler, setpoint_api;
DO $$ BEGIN
    EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM setpoint_api, setpoint_worker',
                   pg_get_serial_sequence('{table}', 'id'));
END $$;
"""
    )


TRACK_AS_OWNER = """
DO $$ BEGIN
    EXECUTE format('ALTER FUNCTION setpoint_track() SECURITY DEFINER SET search_path = %I, pg_temp',
                   (SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                    WHERE c.oid = 'statuses'::regclass));
END $$;
REVOKE EXECUTE ON FUNCTION setpoint_track() FROM PUBLIC;
"""
"""setpoint_track writes statuses for whoever changed a desired row, so the API's role needs no right to
write status itself. It runs as its owner with the search path fixed to the tables' schema (pg_temp last,
so nobody's temporary table stands in for statuses), and nobody else may attach it to a table of theirs:
firing a trigger needs no EXECUTE right, creating one does."""

TRACK_AS_CALLER = """
ALTER FUNCTION setpoint_track() SECURITY INVOKER RESET search_path;
GRANT EXECUTE ON FUNCTION setpoint_track() TO PUBLIC;
"""
"""Undo TRACK_AS_OWNER."""


STATUS_VIEW = """
CREATE VIEW resource_status AS
SELECT s.kind, s.name, s.generation, s.observed_generation, s.ready, s.phase,
       COALESCE(
           (SELECT c->>'message' FROM jsonb_array_elements(s.conditions) AS c WHERE c->>'type' = 'Ready'),
           s.last_error, '') AS message,
       s.consecutive_failures, s.last_reconcile_at, s.last_success_at, s.next_reconcile_at,
       s.deleted_at IS NOT NULL AS deleting
FROM statuses AS s;
"""

"""As migration 0001 made it; migration 0008 replaces it with IDENTITY_VIEW."""

IDENTITY_VIEW = """
CREATE OR REPLACE VIEW resource_status AS
SELECT s.kind, s.name, s.generation, s.observed_generation,
       s.ready AND s.observed_generation IS NOT DISTINCT FROM s.generation AS ready, s.phase,
       CASE WHEN s.deleted_at IS NULL AND s.observed_generation IS DISTINCT FROM s.generation
                 AND (s.ready OR said.message = '')
            THEN format('generation %s not yet observed', s.generation)
                 || COALESCE(' (observed ' || s.observed_generation || ')', '')
            ELSE said.message END AS message,
       s.consecutive_failures, s.last_reconcile_at, s.last_success_at, s.next_reconcile_at,
       s.deleted_at IS NOT NULL AS deleting, s.uid
FROM statuses AS s, LATERAL (SELECT COALESCE(
    (SELECT c->>'message' FROM jsonb_array_elements(s.conditions) AS c WHERE c->>'type' = 'Ready'),
    s.last_error, '') AS message) AS said;
"""
"""A resource whose current generation no worker has observed yet is not ready, whatever its last reconcile
said, and its message says so (unless it is a failure's, which says more)."""

DROP_STATUS_VIEW = "DROP VIEW IF EXISTS resource_status;"


WORKER_FUNCTIONS = """
CREATE FUNCTION setpoint_teardown_done(p_kind text, p_name text) RETURNS boolean LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM statuses WHERE kind = p_kind AND name = p_name AND deleted_at IS NOT NULL RETURNING 1
    )
    SELECT EXISTS (SELECT FROM gone)
$$;

CREATE FUNCTION setpoint_forget_orphan(p_kind text, p_name text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    desired regclass;
    found_row boolean;
BEGIN
    -- The kind's table is the one whose setpoint_track trigger names the kind.
    FOR desired IN SELECT t.tgrelid::regclass FROM pg_trigger AS t
            WHERE t.tgfoid = 'setpoint_track'::regproc AND t.tgnargs = 1
              AND t.tgargs = convert_to(p_kind, 'UTF8') || '\\x00'::bytea LOOP
        EXECUTE format('SELECT EXISTS (SELECT FROM %s WHERE name = $1)', desired) INTO found_row USING p_name;
        IF found_row THEN
            RETURN false;
        END IF;
    END LOOP;
    DELETE FROM statuses WHERE kind = p_kind AND name = p_name AND deleted_at IS NULL;
    RETURN FOUND;
END $$;

CREATE FUNCTION setpoint_pin_node(p_kind text, p_name text, p_node text) RETURNS boolean LANGUAGE sql AS $$
    WITH pinned AS (
        UPDATE statuses SET node = p_node WHERE kind = p_kind AND name = p_name AND node IS NULL RETURNING 1
    )
    SELECT EXISTS (SELECT FROM pinned)
$$;
"""
"""What a worker may do to a status row beyond writing its own columns, each only where it is safe: forget a
torn-down resource (a tombstone), forget a status whose desired row is gone without one (a TRUNCATE), and pin a
host-local resource to its node once (NULL to a name). They run as their owner, so the worker's role needs no
DELETE on statuses and no UPDATE of `node`."""

WORKER_FUNCTION_SIGNATURES = (
    "setpoint_teardown_done(text, text)",
    "setpoint_forget_orphan(text, text)",
    "setpoint_pin_node(text, text, text)",
)


SCHEDULER_FUNCTIONS = """
CREATE FUNCTION setpoint_mark_nodes_lost(p_silent_seconds double precision) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    marked integer;
BEGIN
    WITH lost AS (
        SELECT s.kind, s.name, s.node, n.last_seen_at
        FROM statuses AS s LEFT JOIN nodes AS n ON n.name = s.node
        WHERE s.node IS NOT NULL
          AND (n.last_seen_at IS NULL OR n.last_seen_at < now() - make_interval(secs => p_silent_seconds))
          AND NOT s.conditions @> '[{"type": "Ready", "reason": "NodeLost"}]'
        FOR UPDATE OF s SKIP LOCKED
    )
    UPDATE statuses AS s SET
        ready = false,
        phase = CASE WHEN s.deleted_at IS NOT NULL THEN 'Deleting' ELSE 'Unknown' END,
        conditions = jsonb_build_array(jsonb_build_object(
            'type', 'Ready', 'status', 'False', 'reason', 'NodeLost', 'last_transition_time', now(),
            'message', CASE WHEN lost.last_seen_at IS NULL
                THEN format('node %s has never been seen: no worker runs there', lost.node)
                ELSE format('node %s has been silent since %s', lost.node,
                            date_trunc('second', lost.last_seen_at AT TIME ZONE 'UTC')::text || ' UTC') END
                || '; start its worker again, or move its resources (setpoint node drain, setpoint node forget)'))
            || COALESCE((SELECT jsonb_agg(c) FROM jsonb_array_elements(s.conditions) AS c WHERE c->>'type' <> 'Ready'),
                        '[]'::jsonb)
    FROM lost WHERE s.kind = lost.kind AND s.name = lost.name;
    GET DIAGNOSTICS marked = ROW_COUNT;
    RETURN marked;
END $$;
"""
"""The one status write the scheduler makes: resources whose node has gone silent (no heartbeat within
SETPOINT_NODE_SILENT_SECONDS, or never one) are no longer ready, with reason NodeLost and a message naming
the node and since when; the node's worker overwrites it at its next reconcile. It runs as its owner, so the
scheduler's role needs no right to write status columns."""

SCHEDULER_FUNCTION_SIGNATURES = ("setpoint_mark_nodes_lost(double precision)",)


def as_owner(signatures: tuple[str, ...], role: str | None) -> str:
    """Make functions SECURITY DEFINER, their search path fixed to the tables' schema (pg_temp last, so nobody's
    temporary table stands in for statuses), callable by `role` alone (None: by their owner alone, as for trigger
    functions: firing a trigger needs no right, attaching one to a table does)."""
    return "\n".join(
        f"""
DO $$ BEGIN
    EXECUTE format('ALTER FUNCTION {signature} SECURITY DEFINER SET search_path = %I, pg_temp',
                   (SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                    WHERE c.oid = 'statuses'::regclass));
END $$;
REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC;
"""
        + (f"GRANT EXECUTE ON FUNCTION {signature} TO {role};\n" if role else "")
        for signature in signatures
    )


def drop_functions(signatures: tuple[str, ...]) -> str:
    return "".join(f"DROP FUNCTION IF EXISTS {signature};\n" for signature in signatures)
