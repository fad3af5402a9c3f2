"""Resources that wait for and feed each other: `depends_on`, references to outputs, cycles refused, deletion in
reverse order; on the shared real stack, every resource with a 300 s interval, so only events can explain speed."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from tests.conftest import replicas_of, wait_for
from tests.helpers import ready_at, runs, sql, status

SLOW = 300
"""Every resource's interval: nothing here may wait for one."""


def _file(engine: Engine, name: str, path: Path | str, content: str = "v1\n", **columns: Any) -> None:
    extra = "".join(f", {column}" for column in columns)
    values = "".join(f", :{column}" for column in columns)
    sql(
        engine,
        f"INSERT INTO files (name, path, content, interval_seconds{extra}) VALUES (:n, :p, :c, {SLOW}{values})",
        n=name,
        p=str(path),
        c=content,
        **columns,
    )


def _workload(engine: Engine, name: str, depends_on: list[str], env: str = "{}") -> None:
    sql(
        engine,
        "INSERT INTO workloads (name, command, depends_on, env, interval_seconds) "
        f"VALUES (:n, 'sleep 600', :d, CAST(:e AS jsonb), {SLOW})",
        n=name,
        d=depends_on,
        e=env,
    )


def _ready_condition(row: dict[str, Any] | None) -> dict[str, Any]:
    assert row is not None
    return next(c for c in row["conditions"] if c["type"] == "Ready")


def _waiting(engine: Engine, name: str, kind: str, reason: str, says: str) -> dict[str, Any] | None:
    row = status(engine, name, kind)
    if row and row["phase"] == "Waiting":
        ready = _ready_condition(row)
        if ready["reason"] == reason and says in ready["message"]:
            return row
    return None


def test_a_workload_waits_for_an_invalid_file_and_starts_at_once_when_it_is_fixed(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf = f"{unique}-conf"
    _file(engine, conf, tmp_path)  # a folder: Invalid
    _workload(engine, unique, [f"file/{conf}"])
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT depends_on FROM workloads WHERE name = :n"), {"n": unique}).scalar()
    assert stored == [f"File/{conf}"]  # the CLI's spelling, stored canonically

    row = wait_for(
        lambda: _waiting(engine, unique, "Workload", "DependencyNotReady", f"File/{conf}: Invalid"), 20, "waiting"
    )
    assert row is not None and not row["ready"]
    assert replicas_of(unique) == []
    assert [r["outcome"] for r in runs(engine, unique, "Workload")] and all(
        r["outcome"] == "waiting" and r["actions"] == [] for r in runs(engine, unique, "Workload")
    )

    fixed = time.monotonic()
    sql(engine, "UPDATE files SET path = :p WHERE name = :n", p=str(tmp_path / "app.conf"), n=conf)
    wait_for(lambda: replicas_of(unique), 20, "the workload's replica started")
    print(f"file fixed -> dependent's replica running: {(time.monotonic() - fixed) * 1000:.0f} ms")
    assert wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 20, "workload ready")


def test_a_missing_dependency_is_waited_for_and_its_arrival_starts_the_dependent(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf = f"{unique}-later"
    _workload(engine, unique, [f"File/{conf}"])
    wait_for(
        lambda: _waiting(engine, unique, "Workload", "DependencyMissing", f"File/{conf}: does not exist"), 20, "missing"
    )
    assert replicas_of(unique) == []
    _file(engine, conf, tmp_path / "later.conf")
    wait_for(lambda: replicas_of(unique), 20, "started once its dependency exists and is ready")


def test_a_cycle_or_a_self_reference_is_refused_by_the_database_naming_it(
    engine: Engine, unique: str, tmp_path: Path
) -> None:
    a, b = f"{unique}-a", f"{unique}-b"
    sql(engine, "INSERT INTO files (name, path, content, paused) VALUES (:n, :p, 'a', true)", n=a, p=str(tmp_path / a))
    sql(
        engine,
        "INSERT INTO workloads (name, command, depends_on, paused) VALUES (:n, 'sleep 1', :d, true)",
        n=b,
        d=[f"File/{a}"],
    )
    with pytest.raises(IntegrityError, match=rf"cycle: File/{a} -> Workload/{b} -> File/{a}"):
        sql(engine, "UPDATE files SET depends_on = :d WHERE name = :n", d=[f"workloads/{b}"], n=a)
    with pytest.raises(IntegrityError, match=rf"cycle: File/{a} -> File/{a}"):
        sql(engine, "UPDATE files SET depends_on = :d WHERE name = :n", d=[f"File/{a}"], n=a)
    with pytest.raises(IntegrityError, match=rf"cycle: File/{a} -> Workload/{b} -> File/{a}"):  # implied by a reference
        sql(engine, "UPDATE files SET content = :c WHERE name = :n", c=f"pid {{{{ Workload/{b}.outputs.pids }}}}", n=a)
    with pytest.raises(IntegrityError, match="unknown kind 'Fiel'"):
        sql(engine, "UPDATE workloads SET depends_on = :d WHERE name = :n", d=["Fiel/x"], n=b)
    with engine.connect() as conn:
        graph = conn.execute(
            text("SELECT kind, name, on_kind, on_name FROM dependencies WHERE name IN (:a, :b) ORDER BY 1"),
            {"a": a, "b": b},
        ).all()
        depends = conn.execute(text("SELECT depends_on FROM files WHERE name = :n"), {"n": a}).scalar()
    assert graph == [("Workload", b, "File", a)]  # nothing of the refused statements was kept
    assert depends == []
    sql(engine, "DELETE FROM workloads WHERE name = :n", n=b)
    sql(engine, "DELETE FROM files WHERE name = :n", n=a)


def _config_sha(process: Any) -> str | None:
    try:
        return str(process.environ().get("CONFIG_SHA"))
    except Exception:
        return None


def test_editing_a_referenced_file_rolls_the_workload_with_the_new_digest_in_its_environment(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf = f"{unique}-conf"
    _file(engine, conf, tmp_path / "app.conf", "v1\n")
    _workload(engine, unique, [], env=f'{{"CONFIG_SHA": "{{{{ File/{conf}.outputs.sha256 }}}}"}}')
    first = hashlib.sha256(b"v1\n").hexdigest()
    wait_for(lambda: [p for p in replicas_of(unique) if _config_sha(p) == first], 20, "replica with the v1 digest")
    with engine.connect() as conn:
        env = conn.execute(text("SELECT env FROM workloads WHERE name = :n"), {"n": unique}).scalar()
        graph = conn.execute(text("SELECT on_kind, on_name FROM dependencies WHERE name = :n"), {"n": unique}).all()
    assert env == {"CONFIG_SHA": f"{{{{ File/{conf}.outputs.sha256 }}}}"}  # the row keeps what the user wrote
    assert graph == [("File", conf)]  # the reference is a dependency

    edited = time.monotonic()
    sql(engine, "UPDATE files SET content = 'v2\n' WHERE name = :n", n=conf)
    second = hashlib.sha256(b"v2\n").hexdigest()
    wait_for(
        lambda: (shas := [_config_sha(p) for p in replicas_of(unique)]) == [second] and shas,
        30,
        "the replica rolled to the v2 digest, the old one stopped",
    )
    print(f"config edited -> replica rolled: {(time.monotonic() - edited) * 1000:.0f} ms")
    row = status(engine, conf)
    assert row is not None and row["outputs"] == {"path": str(tmp_path / "app.conf"), "sha256": second}


def test_a_file_a_workload_depends_on_stays_until_the_workload_is_deleted(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf = f"{unique}-conf"
    path = tmp_path / "app.conf"
    _file(engine, conf, path)
    _workload(engine, unique, [f"File/{conf}"])
    wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 20, "workload ready")

    sql(engine, "DELETE FROM files WHERE name = :n", n=conf)
    row = wait_for(
        lambda: (r := status(engine, conf)) and _ready_condition(r)["reason"] == "DependentsExist" and r, 20, "held"
    )
    assert row["phase"] == "Deleting"
    assert f"Workload/{unique}" in _ready_condition(row)["message"]
    assert path.read_text() == "v1\n"  # still in place: the workload may still read it

    sql(engine, "DELETE FROM workloads WHERE name = :n", n=unique)
    wait_for(lambda: not path.exists(), 20, "file removed once the workload is gone")
    assert replicas_of(unique) == []
    assert status(engine, conf) is None


def test_deleting_a_chain_in_one_statement_tears_it_down_leaves_first(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    names = [f"{unique}-{i}" for i in range(3)]  # 2 depends on 1, which depends on 0
    for i, name in enumerate(names):
        _file(engine, name, tmp_path / name, **({"depends_on": [f"File/{names[i - 1]}"]} if i else {}))
    for name in names:
        wait_for(lambda name=name: ready_at(engine, name, 1), 20, f"{name} ready")

    sql(engine, "DELETE FROM files WHERE name = ANY(:names)", names=names)
    wait_for(lambda: all(status(engine, name) is None for name in names), 30, "all torn down")
    with engine.connect() as conn:
        order = conn.execute(
            text(
                "SELECT name FROM runs WHERE kind = 'File' AND name = ANY(:names) AND outcome = 'deleted' ORDER BY id"
            ),
            {"names": names},
        ).scalars()
        assert list(order) == list(reversed(names))
    assert not any((tmp_path / name).exists() for name in names)


def test_a_reference_to_an_output_that_does_not_exist_holds_the_resource_naming_it(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf = f"{unique}-conf"
    _file(engine, conf, tmp_path / "app.conf")
    _workload(engine, unique, [], env=f'{{"X": "{{{{ files/{conf}.outputs.colour }}}}"}}')
    row = wait_for(
        lambda: _waiting(engine, unique, "Workload", "ReferenceUnresolved", f"File/{conf} has no output 'colour'"),
        20,
        "held on the unresolved reference",
    )
    assert "(it publishes path, sha256)" in _ready_condition(row)["message"]
    assert replicas_of(unique) == []


def test_references_resolve_in_templated_fields_only_and_the_escape_writes_a_literal_brace_pair() -> None:
    from models.file import File
    from worker import references
    from worker.needs import Need

    needs = (Need("File/conf", True, True, "Ready", "", {"sha256": "abc", "n": 3}),)
    desired = File(
        name="x",
        path="/srv/{{ File/conf.outputs.sha256 }}",  # not templated: left as written
        content='sha={{ file/conf.outputs.sha256 }} n={{File/conf.outputs.n}} {{ "{{" }} jinja {{ user }}',
    )
    resolved = references.resolve(desired, needs)
    assert resolved.unresolved == ()
    assert resolved.desired.content == "sha=abc n=3 {{ jinja {{ user }}"
    assert resolved.desired.path == "/srv/{{ File/conf.outputs.sha256 }}"
    assert desired.content.startswith("sha={{")  # the row as the user wrote it is untouched


def _next_look_in_s(engine: Engine, name: str, kind: str = "File") -> float:
    with engine.connect() as conn:
        due = conn.execute(
            text("SELECT extract(epoch FROM next_reconcile_at - now()) FROM statuses WHERE kind = :k AND name = :n"),
            {"k": kind, "n": name},
        ).scalar()
    return float(due) if due is not None else float("inf")


def test_a_hold_that_waits_for_an_event_does_not_spin_until_it_comes(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf, app = f"{unique}-conf", unique
    _file(engine, conf, tmp_path / "app.conf")
    _workload(engine, app, [f"File/{conf}"], env=f'{{"X": "{{{{ File/{conf}.outputs.colour }}}}"}}')
    wait_for(lambda: _waiting(engine, app, "Workload", "ReferenceUnresolved", "colour"), 20, "held on a reference")
    # held, with its next look an interval away: the outputs changing is what wakes it, not a loop
    assert wait_for(lambda: _next_look_in_s(engine, app, "Workload") > SLOW / 2, 10, "not due again at once")

    sql(engine, "DELETE FROM files WHERE name = :n", n=conf)
    wait_for(lambda: (r := status(engine, conf)) and _ready_condition(r)["reason"] == "DependentsExist", 20, "held")
    assert wait_for(lambda: _next_look_in_s(engine, conf) > SLOW / 2, 10, "not due again at once")
    before = len(runs(engine, conf))
    sql(engine, "DELETE FROM workloads WHERE name = :n", n=app)
    wait_for(lambda: status(engine, conf) is None, 20, "torn down once its dependent is gone")
    assert len(runs(engine, conf)) - before <= 2


def test_an_owner_that_depends_on_what_it_owns_is_deleted_owned_first_without_deadlock(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf = f"{unique}-conf"
    _workload(engine, unique, [f"File/{conf}"])
    _file(engine, conf, tmp_path / "app.conf", owned_by=f"Workload/{unique}")
    wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 20, "workload ready")
    sql(engine, "DELETE FROM workloads WHERE name = :n", n=unique)
    wait_for(lambda: status(engine, unique, "Workload") is None and status(engine, conf) is None, 30, "both gone")
    assert replicas_of(unique) == [] and not (tmp_path / "app.conf").exists()


def test_ownership_cycles_and_graph_changes_under_a_snapshot_are_refused(
    stack: dict[str, str], engine: Engine, unique: str
) -> None:
    a, b = f"{unique}-a", f"{unique}-b"
    with pytest.raises(IntegrityError, match=rf"ownership cycle: File/{a} owned by File/{a}"):
        sql(engine, "INSERT INTO files (name, path, content, owned_by) VALUES (:n, :p, 'x', :o)",
            n=a, p=f"/tmp/x-{a}", o=f"File/{a}")  # fmt: skip
    sql(engine, "INSERT INTO files (name, path, content, paused) VALUES (:n, :p, 'x', true)", n=a, p=f"/tmp/x-{a}")
    sql(
        engine,
        "INSERT INTO files (name, path, content, paused, owned_by) VALUES (:n, :p, 'x', true, :o)",
        n=b,
        p=f"/tmp/x-{b}",
        o=f"File/{a}",
    )
    with pytest.raises(IntegrityError, match=rf"ownership cycle: File/{a} owned by File/{b} owned by File/{a}"):
        sql(engine, "UPDATE files SET owned_by = :o WHERE name = :n", o=f"files/{b}", n=a)
    for name in (a, b):  # looked at by the running stack (a again as b's owner), then left alone for a while
        wait_for(
            lambda name=name: (
                (r := status(engine, name))
                and r["observed_generation"] == 1
                and r["enqueued_at"] is None
                and _next_look_in_s(engine, name) > 5
            ),
            20,
            "settled",
        )
    with engine.connect() as conn:
        conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        with pytest.raises(Exception, match="in a READ COMMITTED transaction"):
            conn.execute(text("UPDATE files SET depends_on = :d WHERE name = :n"), {"d": [f"File/{b}"], "n": a})
        conn.rollback()
    sql(engine, "DELETE FROM files WHERE name IN (:a, :b)", a=a, b=b)
