"""The reaction ceiling: the bare chain from a changed row to its status, with no Setpoint code on the way.

An UPDATE of a plain table fires a plain row trigger that NOTIFYs the row's name; a listener
(`python -m bench.bare_chain`, a process of its own as Setpoint's scheduler is) sends one Celery task per
notification to the bare worker; the task (bench/bare.py) does one status UPDATE. Setpoint's path does the
same trip and more (generation stamping, a status row kept due, a claim, a lock, a controller), so the time
it takes over this chain's is what Setpoint's code adds. The tables are the benchmark's own, made in its
database by `create`; nothing of Setpoint's schema is used.
"""

from __future__ import annotations

import psycopg

from bench import bare
from models.database import libpq_url
from setpoint import settings as config

CHANNEL = "bench_bare"
LISTENING = "bench bare chain listening"
"""What the listener prints once its LISTEN is in place."""

TABLES = f"""
CREATE TABLE bench_bare (name text PRIMARY KEY, payload integer NOT NULL DEFAULT 0,
                         generation bigint NOT NULL DEFAULT 1);
CREATE TABLE bench_bare_status (name text PRIMARY KEY, observed_generation bigint,
                                ready boolean NOT NULL DEFAULT false, observed_at timestamptz);
CREATE FUNCTION bench_bare_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.name);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_bare_notify AFTER UPDATE ON bench_bare FOR EACH ROW EXECUTE FUNCTION bench_bare_notify();
"""

_ROWS = """INSERT INTO bench_bare (name) SELECT unnest(%(names)s::text[]);
INSERT INTO bench_bare_status (name, observed_generation, ready) SELECT unnest(%(names)s::text[]), 1, true"""

CHANGE = """UPDATE bench_bare SET payload = payload + 1, generation = generation + 1 WHERE name = %(name)s
RETURNING generation"""
"""The change: a new generation, as Setpoint's trigger would stamp it (here the UPDATE itself bumps it)."""

SHOWN = "SELECT observed_generation = %(generation)s AND ready FROM bench_bare_status WHERE name = %(name)s"


def create(database_url: str, names: list[str]) -> None:
    """The chain's tables, trigger and rows (every one of `names` observed and ready at generation 1)."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(TABLES)
        for statement in _ROWS.split(";"):
            conn.execute(statement, {"names": names})  # type: ignore[arg-type]


def listen() -> None:
    """Send one bare reaction task per notification, until stopped (SIGTERM ends the process)."""
    settings = config.get()
    app = bare.make_app(settings)
    with psycopg.connect(libpq_url(settings.database_url), autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection()
            print(LISTENING, flush=True)
            for note in conn.notifies():
                app.send_task(bare.REACT_TASK, args=[note.payload], queue=settings.queue, producer=producer)


if __name__ == "__main__":
    listen()
