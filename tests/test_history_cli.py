"""`setpoint history`, `diff` and `rollback` as a user runs them (the command in a subprocess), after changes made
with psql, with the CLI and through a rollback that the real stack then makes true on disk."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
from pathlib import Path

from sqlalchemy import Engine

from tests.conftest import wait_for
from tests.helpers import ready_at, sql
from tests.test_cli import manifest, setpoint


def psql(database_url: str, statement: str, application_name: str) -> None:
    """The real psql, as an admin at 2 a.m. would run it."""
    done = subprocess.run(
        ["psql", database_url, "-v", "ON_ERROR_STOP=1", "-qc", statement],
        env={**os.environ, "PGAPPNAME": application_name},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_a_psql_update_shows_its_application_user_and_column(
    engine: Engine, database_url: str, stack: dict, unique: str, tmp_path: Path
) -> None:
    sql(engine, "INSERT INTO files (name, path, content) VALUES (:n, :p, 'one')", n=unique, p=str(tmp_path / "f"))
    psql(database_url, f"UPDATE files SET mode = '0600' WHERE name = '{unique}'", "night-fix")

    table = setpoint(stack, "history", "file", unique)
    assert table.returncode == 0, table.stderr
    newest = table.stdout.splitlines()[1]  # newest first, under the header
    assert newest.split()[0] == "2" and "night-fix" in newest and "postgres" in newest and "mode" in newest

    shown = json.loads(setpoint(stack, "history", "files", unique, "-o", "json").stdout)
    assert [entry["generation"] for entry in shown] == [2, 1]
    assert shown[0]["application_name"] == "night-fix" and shown[0]["db_user"] == "postgres"
    assert shown[0]["actor"] is None and shown[0]["operation"] == "update"
    assert shown[0]["changed"] == {"mode": {"old": "0644", "new": "0600"}}
    assert shown[1]["operation"] == "insert" and shown[1]["changed"]["content"] == {"old": None, "new": "one"}


def test_a_cli_change_shows_the_user_and_the_reason(stack: dict, unique: str, tmp_path: Path) -> None:
    spec = {"path": str(tmp_path / "f"), "content": "one"}
    path = manifest(tmp_path, {"kind": "File", "name": unique, "spec": spec})
    assert setpoint(stack, "apply", "-f", str(path), "--reason", "first cut").returncode == 0
    assert setpoint(stack, "pause", "file", unique, "--reason", "INC-42\x1b[31m: hold it").returncode == 0

    shown = json.loads(setpoint(stack, "history", "file", unique, "-o", "json").stdout)
    actor = f"cli:{getpass.getuser()}"
    assert [(e["generation"], e["actor"], e["reason"]) for e in shown] == [
        (2, actor, "INC-42[31m: hold it"),  # the escape character is dropped: a reason cannot drive a terminal
        (1, actor, "first cut"),
    ]
    table = setpoint(stack, "history", "file", unique).stdout
    assert "first cut" in table and "paused" in table
    # the actor is what the writer says; what the database vouches for is beside it, always
    assert f"{actor} (postgres from 127.0.0.1)" in table.splitlines()[1], table


def test_rollback_restores_an_earlier_generation_and_the_file_follows(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    target = tmp_path / "motd"
    path = manifest(tmp_path, {"kind": "File", "name": unique, "spec": {"path": str(target), "content": "good\n"}})
    assert setpoint(stack, "apply", "-f", str(path), "--wait", "--timeout", "30").returncode == 0
    sql(engine, "UPDATE files SET content = 'bad\nworse\n', mode = '0600' WHERE name = :n", n=unique)
    wait_for(lambda: ready_at(engine, unique, 2), 30, "the bad generation applied")
    assert target.read_text() == "bad\nworse\n"

    diff = setpoint(stack, "diff", "file", unique, "--from", "1")
    assert diff.returncode == 0, diff.stderr
    assert 'mode: "0644" -> "0600"' in diff.stdout and "-good" in diff.stdout and "+worse" in diff.stdout

    rolled = setpoint(stack, "rollback", "file", unique, "--to-generation", "1", "--reason", "bad deploy")
    assert rolled.returncode == 0, rolled.stderr
    assert "as generation 3 (restored: content, mode)" in rolled.stdout
    wait_for(lambda: ready_at(engine, unique, 3), 30, "the rolled-back generation applied")
    assert target.read_text() == "good\n" and oct(target.stat().st_mode & 0o777) == "0o644"

    shown = json.loads(setpoint(stack, "history", "file", unique, "-o", "json").stdout)
    assert [e["generation"] for e in shown] == [3, 2, 1], "a rollback adds a generation, never rewrites one"
    assert shown[0]["reason"] == "bad deploy" and shown[0]["actor"] == f"cli:{getpass.getuser()}"
    assert set(shown[0]["changed"]) == {"content", "mode"}

    again = setpoint(stack, "rollback", "file", unique, "--to-generation", "1")
    assert again.returncode == 0 and "nothing written" in again.stdout
    assert (
        setpoint(stack, "diff", "file", unique, "--from", "1").stdout.strip().endswith("no difference in desired state")
    )


def test_rollback_to_a_generation_not_in_history_exits_2_naming_it(stack: dict, engine: Engine, unique: str) -> None:
    sql(engine, "INSERT INTO files (name, path) VALUES (:n, '/tmp/setpoint-history-' || CAST(:n AS varchar))", n=unique)
    unknown = setpoint(stack, "rollback", "file", unique, "--to-generation", "7")
    assert unknown.returncode == 2
    assert (
        "generation" in unknown.stderr
        and "no generation 7" in unknown.stderr
        and "known generations: 1" in unknown.stderr
    )
    missing = setpoint(stack, "rollback", "file", f"{unique}-nope", "--to-generation", "1")
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert setpoint(stack, "diff", "file", unique, "--from", "7").returncode == 2


def test_diff_prints_no_terminal_control_sequence_from_the_content(stack: dict, engine: Engine, unique: str) -> None:
    sql(
        engine,
        "INSERT INTO files (name, path, content) VALUES (:n, :p, 'one\ntwo\n')",
        n=unique,
        p=f"/nonexistent/h/{unique}",
    )
    sql(engine, "UPDATE files SET content = :c WHERE name = :n", n=unique, c="one\n\x1b[2J\x1b]0;owned\x07two\r\n")
    shown = setpoint(stack, "diff", "file", unique, "--from", "1")
    assert shown.returncode == 0, shown.stderr
    assert "+[2J]0;ownedtwo" in shown.stdout and "-two" in shown.stdout
    assert not any(c in shown.stdout for c in "\x1b\x07\r"), repr(shown.stdout)
