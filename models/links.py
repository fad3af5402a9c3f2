"""The SQL that links resources: references spelled in one canonical form, the dependency graph, cycles refused,
and dependents woken the moment what they wait for is ready.

A desired row names what it needs in `depends_on` (`{file/app-conf, PostgresDatabase/app}`) and in references
inside its templated fields (`{{ File/app-conf.outputs.sha256 }}`). Its BEFORE trigger stores each `depends_on`
entry as `Kind/name` (any spelling the CLI takes: `file`, `File`, `files`); its AFTER trigger keeps the
`dependencies` table (models/dependency.py) and refuses a cycle, naming it. On `statuses`, a resource that
becomes ready, or whose outputs change, makes every resource that depends on it due in the same transaction;
one whose status row goes (torn down) makes due what it depended on, which may be waiting for it to go.

Migration 0010 creates these and links every kind that exists; `attach()` links a kind created later (it is
part of `triggers.attach`).
"""

from __future__ import annotations

from models.base import NAME_PATTERN
from models.triggers import CHANNEL

KIND_PATTERN = r"[A-Za-z][A-Za-z0-9_]*"
NAME_PART = NAME_PATTERN.removeprefix("^").removesuffix("$").replace("(", "(?:")
KEY_PATTERN = r"[A-Za-z0-9_][-A-Za-z0-9_]*"
REFERENCE = rf"\{{\{{ *({KIND_PATTERN}/{NAME_PART})\.outputs\.({KEY_PATTERN}) *\}}\}}"
"""A reference to another resource's output in a templated field; spaces (not tabs or newlines) may pad it.
The same regular expression in PostgreSQL (which takes it as an ARE) and in Python (worker/references.py)."""
SECRET_REFERENCE = rf"\{{\{{ *(?:[Ss]ecrets?)/({NAME_PART}) *\}}\}}"
"""A secret's value in a templated field: `{{ Secret/db-password }}` (models/secret.py), resolved by the worker."""
SECRET_FIELD = "secret:"
"""A link trigger argument naming a column that holds a secret's name (`secret:server`): a dependency on it."""
ESCAPE = '{{ "{{" }}'
"""How a templated field writes a literal `{{` that would otherwise start a reference."""

FUNCTIONS = rf"""
CREATE FUNCTION setpoint_kinds() RETURNS TABLE (kind text, plural text) LANGUAGE sql STABLE AS $$
    SELECT convert_from(substring(t.tgargs FROM 1 FOR position('\x00'::bytea IN t.tgargs) - 1), 'UTF8'),
           c.relname::text
    FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
    WHERE t.tgfoid = 'setpoint_track'::regproc
$$;

CREATE FUNCTION setpoint_reference(p_ref text, p_table text, p_field text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    spelled text := btrim(split_part(p_ref, '/', 1));
    target text := substr(p_ref, strpos(p_ref, '/') + 1);
    canonical text;
BEGIN
    IF p_ref IS NULL OR strpos(p_ref, '/') = 0 OR target !~ '{NAME_PATTERN}' THEN
        RAISE EXCEPTION '%: % is not a reference Kind/name (for example File/app-conf)', p_field, quote_nullable(p_ref)
            USING ERRCODE = 'check_violation', CONSTRAINT = format('ck_%s_%s_reference', p_table, p_field);
    END IF;
    SELECT k.kind INTO canonical FROM setpoint_kinds() AS k
    WHERE lower(k.kind) = lower(spelled) OR k.plural = lower(spelled) ORDER BY k.kind LIMIT 1;
    IF lower(spelled) IN ('secret', 'secrets') THEN
        canonical := 'Secret';  -- not a kind: a row of `secrets`, ready once it exists
    END IF;
    IF canonical IS NULL THEN
        RAISE EXCEPTION '%: % names an unknown kind %; known kinds: %', p_field, quote_literal(p_ref),
            quote_literal(spelled), (SELECT string_agg(k.kind || ' (' || k.plural || ')', ', ' ORDER BY k.kind)
                                     FROM setpoint_kinds() AS k)
            USING ERRCODE = 'check_violation', CONSTRAINT = format('ck_%s_%s_reference', p_table, p_field);
    END IF;
    RETURN canonical || '/' || target;
END $$;

CREATE FUNCTION setpoint_refs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ref text;
    canonical text;
    kept text[] := '{{}}';
    chain text[];
    owner text;
    owner_table text;
BEGIN
    FOREACH ref IN ARRAY COALESCE(NEW.depends_on, '{{}}') LOOP
        canonical := setpoint_reference(ref, TG_TABLE_NAME, 'depends_on');
        IF canonical = TG_ARGV[0] || '/' || NEW.name THEN
            RAISE EXCEPTION 'cycle: % -> %', canonical, canonical
                USING ERRCODE = 'check_violation', CONSTRAINT = format('ck_%s_depends_on_cycle', TG_TABLE_NAME),
                      HINT = 'A resource cannot depend on itself.';
        END IF;
        IF NOT canonical = ANY(kept) THEN
            kept := kept || canonical;
        END IF;
    END LOOP;
    NEW.depends_on := kept;
    IF NEW.owned_by IS NOT NULL THEN
        NEW.owned_by := setpoint_reference(NEW.owned_by, TG_TABLE_NAME, 'owned_by');
        -- Ownership never loops: a resource owned by itself, or by something it owns, could never be deleted.
        chain := ARRAY[TG_ARGV[0] || '/' || NEW.name];
        owner := NEW.owned_by;
        WHILE owner IS NOT NULL AND cardinality(chain) <= 64 LOOP
            chain := chain || owner;
            IF owner = chain[1] THEN
                RAISE EXCEPTION 'ownership cycle: %', array_to_string(chain, ' owned by ')
                    USING ERRCODE = 'check_violation', CONSTRAINT = format('ck_%s_owned_by_cycle', TG_TABLE_NAME);
            END IF;
            SELECT k.plural INTO owner_table FROM setpoint_kinds() AS k WHERE k.kind = split_part(owner, '/', 1);
            EXIT WHEN owner_table IS NULL;
            EXECUTE format('SELECT owned_by FROM %I WHERE name = $1', owner_table)
                INTO owner USING substr(owner, strpos(owner, '/') + 1);
        END LOOP;
    END IF;
    -- A controller (the worker's role) writes rows owned by a live owner, and never gives a row another owner:
    -- it cannot take over another's row, nor make one an admin's.
    IF (TG_OP = 'INSERT' OR NEW.owned_by IS DISTINCT FROM OLD.owned_by)
            AND pg_has_role(current_user, 'setpoint_worker', 'USAGE')
            AND NOT pg_has_role(current_user, 'setpoint_api', 'USAGE')
            AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        IF TG_OP = 'UPDATE' THEN
            RAISE EXCEPTION 'owned_by: a controller cannot change the owner of %/% (% to %)',
                TG_ARGV[0], NEW.name, OLD.owned_by, NEW.owned_by
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF NEW.owned_by IS NULL OR NOT EXISTS (SELECT FROM statuses AS s
                WHERE s.kind = split_part(NEW.owned_by, '/', 1)
                  AND s.name = substr(NEW.owned_by, strpos(NEW.owned_by, '/') + 1) AND s.deleted_at IS NULL) THEN
            RAISE EXCEPTION 'owned_by: a controller may create %/% only for a live owner, not %',
                TG_ARGV[0], NEW.name, COALESCE(NEW.owned_by, 'nobody')
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION setpoint_track_links() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    me text := TG_ARGV[0] || '/' || NEW.name;
    wanted text[] := NEW.depends_on;
    had text[];
    field text;
    cycle text[];
BEGIN
    FOREACH field IN ARRAY TG_ARGV[1:] LOOP  -- a reference in a templated field is a dependency too
        IF field LIKE '{SECRET_FIELD}%' THEN  -- a column naming a secret
            field := substr(field, {len(SECRET_FIELD) + 1});
            IF to_jsonb(NEW) ->> field IS NOT NULL THEN
                wanted := wanted || setpoint_reference('Secret/' || (to_jsonb(NEW) ->> field), TG_TABLE_NAME, field);
            END IF;
            CONTINUE;
        END IF;
        CONTINUE WHEN strpos((to_jsonb(NEW) -> field)::text, '{{{{') = 0;
        wanted := wanted || ARRAY(
            SELECT setpoint_reference(m[1], TG_TABLE_NAME, field)
            FROM regexp_matches((to_jsonb(NEW) -> field)::text, '{REFERENCE}', 'g') AS m);
        wanted := wanted || ARRAY(
            SELECT 'Secret/' || m[1]
            FROM regexp_matches((to_jsonb(NEW) -> field)::text, '{SECRET_REFERENCE}', 'g') AS m);
    END LOOP;
    wanted := ARRAY(SELECT DISTINCT w FROM unnest(wanted) AS w ORDER BY 1);
    had := ARRAY(SELECT on_kind || '/' || on_name FROM dependencies
                 WHERE kind = TG_ARGV[0] AND name = NEW.name ORDER BY 1);
    IF wanted = had THEN
        RETURN NULL;
    END IF;
    IF cardinality(wanted) > {{max_dependencies}} THEN
        RAISE EXCEPTION '% depends on % resources; at most {{max_dependencies}}', me, cardinality(wanted)
            USING ERRCODE = 'check_violation', CONSTRAINT = format('ck_%s_depends_on_size', TG_TABLE_NAME);
    END IF;
    -- One graph change at a time: two transactions each adding half of a cycle would both pass otherwise; and
    -- the walk below must see the other's committed edges, which a REPEATABLE READ snapshot would not.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'change dependencies of % in a READ COMMITTED transaction (this one is %)', me,
            upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'A cycle check cannot see what concurrent transactions commit under a snapshot.';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('setpoint dependencies', 0));
    DELETE FROM dependencies WHERE kind = TG_ARGV[0] AND name = NEW.name;
    INSERT INTO dependencies (kind, name, on_kind, on_name)
    SELECT TG_ARGV[0], NEW.name, split_part(w, '/', 1), substr(w, strpos(w, '/') + 1) FROM unnest(wanted) AS w;
    WITH RECURSIVE walk (kind, name, path) AS (
        SELECT d.on_kind, d.on_name, ARRAY[me, d.on_kind || '/' || d.on_name]
        FROM dependencies AS d WHERE d.kind = TG_ARGV[0] AND d.name = NEW.name
        UNION ALL
        SELECT d.on_kind, d.on_name, w.path || (d.on_kind || '/' || d.on_name)
        FROM walk AS w JOIN dependencies AS d ON d.kind = w.kind AND d.name = w.name
        WHERE w.path[cardinality(w.path)] <> me AND NOT (d.on_kind || '/' || d.on_name) = ANY(w.path[2:])
    )
    SELECT w.path INTO cycle FROM walk AS w WHERE w.kind || '/' || w.name = me LIMIT 1;
    IF cycle IS NOT NULL THEN
        RAISE EXCEPTION 'cycle: %', array_to_string(cycle, ' -> ')
            USING ERRCODE = 'check_violation', CONSTRAINT = format('ck_%s_depends_on_cycle', TG_TABLE_NAME),
                  HINT = 'Remove one of these dependencies (depends_on, or a reference to an output).';
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION setpoint_wake_dependents() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- clock_timestamp(), not now(): a reconcile of the dependent that began before this transaction sees the
    -- wake-up as later than its own start, and keeps it (worker/store.py).
    IF TG_OP = 'DELETE' THEN  -- torn down: what it depended on may be waiting for it to go
        UPDATE statuses AS s SET next_reconcile_at = clock_timestamp()
        FROM dependencies AS d
        WHERE d.kind = OLD.kind AND d.name = OLD.name AND s.kind = d.on_kind AND s.name = d.on_name
          AND s.deleted_at IS NOT NULL;
        DELETE FROM dependencies WHERE kind = OLD.kind AND name = OLD.name;
    ELSE
        UPDATE statuses AS s SET next_reconcile_at = clock_timestamp()
        FROM dependencies AS d
        WHERE d.on_kind = NEW.kind AND d.on_name = NEW.name AND s.kind = d.kind AND s.name = d.name
          AND s.deleted_at IS NULL;
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('{CHANNEL}', '');
    END IF;
    RETURN NULL;
END $$;

-- Ready at its generation, or its phase or outputs changed: what depends on it acts, or says why it waits.
CREATE TRIGGER setpoint_wake_dependents AFTER UPDATE ON statuses FOR EACH ROW
    WHEN (NEW.phase IS DISTINCT FROM OLD.phase
          OR COALESCE(NEW.ready AND NEW.observed_generation = NEW.generation AND NEW.deleted_at IS NULL, false)
              AND NOT COALESCE(OLD.ready AND OLD.observed_generation = OLD.generation AND OLD.deleted_at IS NULL,
                               false)
          OR NEW.outputs IS DISTINCT FROM OLD.outputs)
    EXECUTE FUNCTION setpoint_wake_dependents();
CREATE TRIGGER setpoint_forget_dependencies AFTER DELETE ON statuses FOR EACH ROW
    EXECUTE FUNCTION setpoint_wake_dependents();
"""
"""Created by migration 0010 (formatted with the most dependencies a resource may have)."""

AS_OWNER = ("setpoint_track_links()", "setpoint_wake_dependents()")
"""Run as their owner: whoever writes a desired row or a status row keeps the graph without rights on it."""

DROP_FUNCTIONS = """
DROP TRIGGER IF EXISTS setpoint_forget_dependencies ON statuses;
DROP TRIGGER IF EXISTS setpoint_wake_dependents ON statuses;
DROP FUNCTION IF EXISTS setpoint_wake_dependents();
DROP FUNCTION IF EXISTS setpoint_track_links();
DROP FUNCTION IF EXISTS setpoint_refs();
DROP FUNCTION IF EXISTS setpoint_reference(text, text, text);
DROP FUNCTION IF EXISTS setpoint_kinds();
"""


def functions(max_dependencies: int) -> str:
    return FUNCTIONS.replace("{max_dependencies}", str(max_dependencies))


def attach(table: str, kind: str, templated: tuple[str, ...] = (), secret_fields: tuple[str, ...] = ()) -> str:
    """Link a kind's table (after triggers.attach): canonical references, the graph, cycles refused; `templated`
    fields may reference outputs and secrets, `secret_fields` hold a secret's name. An UPDATE that changes none
    of these columns fires nothing (a statement updating 100,000 labels pays no link). Before migration 0010 has
    run (its own migrations' time) it does nothing: 0010 links every kind there is."""
    secrets = tuple(SECRET_FIELD + field for field in secret_fields)
    args = ", ".join(f"'{arg}'" for arg in (kind, *templated, *secrets))
    linked = ["depends_on", *templated, *secret_fields]
    links_changed = " OR ".join(f'OLD."{c}" IS DISTINCT FROM NEW."{c}"' for c in linked)
    return f"""
DO $$ BEGIN
    IF to_regproc('setpoint_track_links') IS NOT NULL THEN
        CREATE TRIGGER setpoint_refs BEFORE INSERT ON {table}
            FOR EACH ROW EXECUTE FUNCTION setpoint_refs({args});
        CREATE TRIGGER setpoint_refs_changed BEFORE UPDATE ON {table} FOR EACH ROW
            WHEN (OLD.depends_on IS DISTINCT FROM NEW.depends_on OR OLD.owned_by IS DISTINCT FROM NEW.owned_by)
            EXECUTE FUNCTION setpoint_refs({args});
        CREATE TRIGGER setpoint_track_links AFTER INSERT ON {table}
            FOR EACH ROW EXECUTE FUNCTION setpoint_track_links({args});
        CREATE TRIGGER setpoint_track_links_changed AFTER UPDATE ON {table} FOR EACH ROW
            WHEN ({links_changed})
            EXECUTE FUNCTION setpoint_track_links({args});
    END IF;
END $$;
"""


def detach(table: str) -> str:
    triggers = ("setpoint_track_links_changed", "setpoint_track_links", "setpoint_refs_changed", "setpoint_refs")
    return "".join(f"DROP TRIGGER IF EXISTS {trigger} ON {table};\n" for trigger in triggers)
