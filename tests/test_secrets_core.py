"""Secrets as dependencies: a missing one holds its referrer (Waiting), a set or changed one makes it due at once;
values are scrubbed from whatever a reconcile records."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from tests.conftest import wait_for
from tests.helpers import runs, sql, status
from worker import secrets


def _phase(engine: Engine, name: str) -> str | None:
    row = status(engine, name)
    return row["phase"] if row else None


def test_a_file_whose_content_names_a_missing_secret_waits_and_is_written_once_it_is_set(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    path = tmp_path / "credentials"
    sql(
        engine,
        "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, :c, 300)",
        n=unique,
        p=str(path),
        c=f"password={{{{ Secret/{unique} }}}}\n",
    )
    row = wait_for(lambda: _phase(engine, unique) == "Waiting" and status(engine, unique), 20, "waiting")
    assert row and f"Secret/{unique}: does not exist" in row["conditions"][0]["message"]
    assert not path.exists()

    sql(engine, "INSERT INTO secrets (name, value) VALUES (:n, 's3cr3t-one')", n=unique)
    wait_for(lambda: path.exists() and path.read_text() == "password=s3cr3t-one\n", 20, "written with the value")
    sql(engine, "UPDATE secrets SET value = 's3cr3t-two' WHERE name = :n", n=unique)
    wait_for(lambda: path.read_text() == "password=s3cr3t-two\n", 20, "rotated at once (interval 300 s)")

    recorded = repr(status(engine, unique)) + repr(runs(engine, unique))
    assert "s3cr3t" not in recorded
    sql(engine, "DELETE FROM files WHERE name = :n", n=unique)
    sql(engine, "DELETE FROM secrets WHERE name = :n", n=unique)


def test_scrub_masks_every_value_read_and_a_urls_password_in_strings_and_json() -> None:
    with secrets.recording() as used:
        secrets.remember("postgresql://admin:p%40ss-word@db:5432/app")
        secrets.remember("tok")  # too short to mask without mangling every message
    assert "p@ss-word" in used
    error = "connect postgresql://admin:p%40ss-word@db:5432/app failed: password p@ss-word refused; tok"
    assert secrets.scrub(error, used) == "connect *** failed: password *** refused; tok"
    assert secrets.scrub({"argv": ["run", 'p@ss-word"x']}, used) == {"argv": ["run", '***"x']}
    assert str(secrets.Redacted("p@ss-word")) == "***" and "p@ss" not in repr(secrets.Redacted("p@ss-word"))
