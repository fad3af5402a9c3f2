"""The kubectl-style CLI, run as a user runs it (the `setpoint` command in a subprocess), on the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from sqlalchemy import Engine

from tests.conftest import ROOT, wait_for
from tests.helpers import ready_at, sql, status


def setpoint(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "setpoint.cli", *args],
        cwd=ROOT,
        env={**env, "COLUMNS": "200"},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def manifest(tmp_path: Path, *documents: dict) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


def test_apply_then_get_shows_it_ready(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> None:
    target = tmp_path / "motd"
    path = manifest(tmp_path, {"kind": "file", "name": unique, "spec": {"path": str(target), "content": "hi"}})
    done = setpoint(stack, "apply", "-f", str(path), "--wait", "--timeout", "30")
    assert done.returncode == 0, done.stderr
    assert f"file/{unique} created" in done.stdout
    assert target.read_text() == "hi"
    shown = json.loads(setpoint(stack, "get", "files", unique, "-o", "json").stdout)
    assert shown["kind"] == "File" and shown["spec"]["content"] == "hi"
    assert shown["status"]["ready"] is True and shown["status"]["observed_generation"] == 1
    assert {"phase", "conditions", "last_error"} <= set(shown["status"])
    again = setpoint(stack, "apply", "-f", str(path))
    assert f"file/{unique} unchanged" in again.stdout and status(engine, unique)["generation"] == 1
    table = setpoint(stack, "get", "File")
    assert unique in table.stdout and "NAME" in table.stdout and "1/1" in table.stdout


def test_a_manifest_with_one_bad_document_applies_nothing(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    path = manifest(
        tmp_path,
        {"kind": "file", "name": f"{unique}-good", "spec": {"path": str(tmp_path / "good")}},
        {"kind": "file", "name": f"{unique}-bad", "spec": {"path": "relative/path"}},
    )
    done = setpoint(stack, "apply", "-f", str(path))
    assert done.returncode == 2
    assert f"file/{unique}-bad" in done.stderr and "document 2" in done.stderr
    assert "spec.path" in done.stderr and "absolute path" in done.stderr
    assert "Traceback" not in done.stderr
    assert status(engine, f"{unique}-good") is None, "nothing applied"


def test_invalid_input_exits_2_and_names_it(stack: dict, unique: str, tmp_path: Path) -> None:
    cases = [
        (["get", "gizmos"], "unknown kind 'gizmos'"),
        (["apply", "-f", "-"], "field 'spec.colour'"),
        (["apply", "-f", str(tmp_path / "missing.yaml")], "no such file"),
        (["get", "files", "-o", "xml"], "--output must be"),
    ]
    stdin = f"kind: file\nname: {unique}\nspec: {{path: /tmp/x, colour: red}}\n"
    for args, message in cases:
        done = setpoint(stack, *args, stdin=stdin)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    assert setpoint(stack, "describe", "file", "no-such-thing").returncode == 1


def test_directory_and_stdin_manifests_and_delete(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "a.yaml").write_text(
        yaml.safe_dump({"kind": "files", "name": f"{unique}-a", "spec": {"path": str(tmp_path / "a")}})
    )
    (folder / "b.json").write_text(
        json.dumps({"kind": "File", "name": f"{unique}-b", "spec": {"path": str(tmp_path / "b")}})
    )
    assert setpoint(stack, "apply", "-f", str(folder)).returncode == 0
    wait_for(lambda: ready_at(engine, f"{unique}-a", 1) and ready_at(engine, f"{unique}-b", 1), 20, "both ready")
    piped = f"kind: file\nname: {unique}-a\nspec: {{path: {tmp_path / 'a'}}}\n"
    assert setpoint(stack, "delete", "-f", "-", stdin=piped).returncode == 0
    assert setpoint(stack, "delete", "file", f"{unique}-b").returncode == 0
    wait_for(lambda: not (tmp_path / "a").exists() and not (tmp_path / "b").exists(), 20, "files removed")


def test_describe_plan_reconcile_pause_and_resume(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> None:
    target = tmp_path / "motd"
    sql(
        engine,
        "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, 'x', 3600)",
        n=unique,
        p=str(target),
    )
    wait_for(lambda: ready_at(engine, unique, 1), 20, "ready")
    in_sync = setpoint(stack, "plan", "file", unique)
    assert "is in sync" in in_sync.stdout and in_sync.returncode == 0
    # Paused (and so no longer watched), the tampering stays for plan to see and a reconcile only reports it.
    assert setpoint(stack, "pause", "file", unique).returncode == 0
    wait_for(lambda: (s := status(engine, unique)) and s["observed_generation"] == 2, 20, "pause observed")
    target.write_text("tampered")
    assert setpoint(stack, "reconcile", "file", unique).returncode == 0
    wait_for(lambda: (s := status(engine, unique)) and s["phase"] == "Drifted", 20, "drift reported while paused")
    planned = setpoint(stack, "plan", "file", unique)
    assert f"write 1 bytes to {target}" in planned.stdout and target.read_text() == "tampered", "plan acts on nothing"
    assert planned.returncode == 3, "changes pending: exit 3, as scripts can tell apart from 0 (in sync) and 1, 2"
    assert setpoint(stack, "resume", "file", unique).returncode == 0
    wait_for(lambda: target.read_text() == "x", 20, "healed once resumed")
    wait_for(lambda: ready_at(engine, unique, 3), 20, "ready once resumed")
    described = setpoint(stack, "describe", "file", unique).stdout
    assert "Ready=True" in described and "changed" in described and "write 1 bytes" in described


def test_kinds_lists_every_kind_and_its_fields(stack: dict) -> None:
    listed = setpoint(stack, "kinds").stdout
    assert "File" in listed and "Workload" in listed and "replicas" in listed and "Flaky" in listed


def test_sql_changes_show_in_the_cli_at_once(stack: dict, engine: Engine, unique: str) -> None:
    sql(engine, "INSERT INTO files (name, path, content) VALUES (:n, '/tmp/cli-sql', 'from sql')", n=unique)
    shown = yaml.safe_load(setpoint(stack, "get", "file", unique, "-o", "yaml").stdout)
    assert shown["spec"]["content"] == "from sql" and shown["status"]["generation"] == 1


def test_get_of_an_empty_kind_says_none_found(fresh: dict) -> None:
    done = setpoint(fresh, "get", "files")
    assert done.returncode == 0 and done.stderr.strip() == "No files found." and done.stdout == ""


def test_cli_without_a_database_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETPOINT_")}
    env["SETPOINT_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    done = setpoint(env, "get", "files")
    assert done.returncode == 1 and "cannot reach the database" in done.stderr and "Traceback" not in done.stderr
