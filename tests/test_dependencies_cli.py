"""Dependencies, outputs and references as a user meets them: in manifests (`setpoint apply`), the REST API,
`setpoint describe`, `setpoint tree` and `setpoint plan`, run as the real command on the real stack."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api.app import create_app
from setpoint.settings import Settings
from tests.conftest import wait_for
from tests.helpers import ready_at, sql, status
from tests.test_cli import manifest, setpoint

SLOW = 300
"""Every resource's interval here: what a test sees comes from events, not from a period."""


@pytest.fixture(scope="module")
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(
        create_app(Settings(database_url=database_url, api_token=None), insecure_no_auth=True),
        base_url="http://localhost",
    ) as client:
        yield client


def _file(name: str, path: Path | str, **spec: Any) -> dict[str, Any]:
    return {"kind": "file", "name": name, "spec": {"path": str(path), "interval_seconds": SLOW, **spec}}


def _stored(engine: Engine, table: str, *names: str) -> list[str]:
    with engine.connect() as conn:
        found = conn.execute(text(f"SELECT name FROM {table} WHERE name = ANY(:n) ORDER BY name"), {"n": list(names)})
        return list(found.scalars())


def _ref(kind: str, name: str, key: str) -> str:
    return "{{ " + f"{kind}/{name}.outputs.{key}" + " }}"


# --- manifests -----------------------------------------------------------------------------------------------


def test_apply_stores_any_spelling_canonically_and_applying_again_changes_nothing(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    a, b = f"{unique}-a", f"{unique}-b"
    path = manifest(
        tmp_path,
        _file(b, tmp_path / "b", depends_on=[f"files/{a}"]),  # declared before what it depends on: allowed
        _file(a, tmp_path / "a"),
    )
    first = setpoint(stack, "apply", "-f", str(path), "--wait", "--timeout", "30")
    assert first.returncode == 0, first.stderr
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT depends_on FROM files WHERE name = :n"), {"n": b}).scalar()
    assert stored == [f"File/{a}"]
    again = setpoint(stack, "apply", "-f", str(path))
    assert f"file/{b} unchanged" in again.stdout, again.stdout + again.stderr
    assert status(engine, b)["generation"] == 1
    shown = json.loads(setpoint(stack, "get", "file", b, "-o", "json").stdout)
    assert shown["spec"]["depends_on"] == [f"File/{a}"]


def test_apply_refuses_a_cycle_made_by_several_documents_naming_them_and_applies_nothing(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    a, b, c = f"{unique}-a", f"{unique}-b", f"{unique}-c"
    path = manifest(
        tmp_path,
        _file(c, tmp_path / "c"),  # innocent: must not be applied either
        _file(a, tmp_path / "a", depends_on=[f"file/{b}"]),
        _file(b, tmp_path / "b", depends_on=[f"File/{a}"]),
    )
    done = setpoint(stack, "apply", "-f", str(path))
    assert done.returncode == 2, done.stdout + done.stderr
    said = " ".join(done.stderr.split())  # as one line, however the terminal wrapped it
    assert f"file/{b} ({path}, document 3): field 'spec.depends_on'" in said
    assert f"cycle: File/{b} -> File/{a} -> File/{b}" in said
    assert f"File/{a} is declared in {path}, document 2" in said
    assert "Traceback" not in done.stderr
    assert _stored(engine, "files", a, b, c) == [], "nothing applied"


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"depends_on": ["gizmo/x"]}, "spec.depends_on", "unknown kind 'gizmo'"),
        ({"depends_on": ["no-kind-here"]}, "spec.depends_on", "is not a reference Kind/name"),
        ({"depends_on": ["File/Not A Name"]}, "spec.depends_on", "is not a reference Kind/name"),
        ({"depends_on": ["SELF"]}, "spec.depends_on", "cycle: Workload/NAME -> Workload/NAME"),
        ({"env": {"X": "{{ Gizmo/x.outputs.a }}"}}, "spec.env", "unknown kind 'Gizmo'"),
    ],
    ids=["unknown kind", "no slash", "bad name", "itself", "reference to an unknown kind"],
)
def test_apply_refuses_a_bad_dependency_naming_the_field(
    stack: dict, engine: Engine, unique: str, tmp_path: Path, spec: dict[str, Any], field: str, message: str
) -> None:
    if spec.get("depends_on") == ["SELF"]:
        spec = {"depends_on": [f"workloads/{unique}"]}
    document = {"kind": "workload", "name": unique, "spec": {"command": "sleep 60", "paused": True, **spec}}
    done = setpoint(stack, "apply", "-f", str(manifest(tmp_path, document)))
    assert done.returncode == 2, done.stdout + done.stderr
    said = " ".join(done.stderr.split())
    assert f"workload/{unique} ({tmp_path / 'manifest.yaml'}, document 1): field '{field}'" in said
    assert message.replace("NAME", unique) in said
    assert _stored(engine, "workloads", unique) == []


# --- the REST API ---------------------------------------------------------------------------------------------


def _detail(answer: Any) -> dict[str, Any]:
    assert answer.status_code == 422, answer.text
    detail: dict[str, Any] = answer.json()["detail"][0]
    return detail


def test_the_api_refuses_a_cycle_with_422_naming_the_field_on_post_put_and_patch(
    client: TestClient, engine: Engine, unique: str, tmp_path: Path
) -> None:
    a, b = f"{unique}-a", f"{unique}-b"
    spec = {"path": str(tmp_path / "a"), "paused": True, "interval_seconds": SLOW}
    assert client.post("/v1/files", json={"name": a, "spec": spec}).status_code == 201
    made = client.post(
        "/v1/files", json={"name": b, "spec": {**spec, "path": str(tmp_path / "b"), "depends_on": [f"file/{a}"]}}
    )
    assert made.status_code == 201, made.text
    assert made.json()["spec"]["depends_on"] == [f"File/{a}"]

    patched = _detail(client.patch(f"/v1/files/{a}", json={"spec": {"depends_on": [f"files/{b}"]}}))
    assert patched["loc"] == ["body", "spec", "depends_on"]
    assert f"cycle: File/{a} -> File/{b} -> File/{a}" in patched["msg"]
    put = _detail(client.put(f"/v1/files/{a}", json={"spec": {**spec, "depends_on": [f"File/{b}"]}}))
    assert put["loc"] == ["body", "spec", "depends_on"] and "cycle:" in put["msg"]
    itself = _detail(
        client.post("/v1/files", json={"name": f"{unique}-c", "spec": {**spec, "depends_on": [f"File/{unique}-c"]}})
    )
    assert (
        itself["loc"] == ["body", "spec", "depends_on"]
        and f"cycle: File/{unique}-c -> File/{unique}-c" in itself["msg"]
    )
    # A reference implies the dependency: the field that holds it is named.
    through = _detail(client.patch(f"/v1/files/{a}", json={"spec": {"content": _ref("File", b, "sha256")}}))
    assert through["loc"] == ["body", "spec", "content"] and "cycle:" in through["msg"]
    unknown = _detail(
        client.post(
            "/v1/workloads",
            json={"name": unique, "spec": {"command": "sleep 1", "env": {"X": _ref("Gizmo", "x", "y")}}},
        )
    )
    assert unknown["loc"] == ["body", "spec", "env"] and "unknown kind 'Gizmo'" in unknown["msg"]

    assert client.get(f"/v1/files/{a}").json()["spec"]["depends_on"] == []  # nothing refused was kept
    assert client.get(f"/v1/files/{a}").json()["status"]["generation"] == 1
    assert _stored(engine, "files", f"{unique}-c") == [] and _stored(engine, "workloads", unique) == []
    sql(engine, "DELETE FROM files WHERE name = ANY(:n)", n=[a, b])


@pytest.fixture
def linked(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> dict[str, str]:
    """A workload that depends on two files, one of which depends on the other, whose first file owns a third:
    all ready. Returns their names."""
    names = {"conf": f"{unique}-conf", "extra": f"{unique}-extra", "owned": f"{unique}-owned", "app": unique}
    columns = {
        "conf": {},
        "extra": {"depends_on": [f"file/{names['conf']}"]},
        "owned": {"owned_by": f"files/{names['conf']}"},
    }
    for name, extra in columns.items():
        sql(
            engine,
            "INSERT INTO files (name, path, content, depends_on, owned_by, interval_seconds) "
            "VALUES (:n, :p, 'v1\n', :d, :o, :i)",
            n=names[name],
            p=str(tmp_path / name),
            d=extra.get("depends_on", []),
            o=extra.get("owned_by"),
            i=SLOW,
        )
    sql(
        engine,
        "INSERT INTO workloads (name, command, depends_on, env, interval_seconds) "
        "VALUES (:n, 'sleep 600', :d, CAST(:e AS jsonb), :i)",
        n=unique,
        d=[f"File/{names['extra']}"],
        e=json.dumps({"CONFIG_SHA": _ref("file", names["conf"], "sha256")}),
        i=SLOW,
    )
    for name in ("conf", "extra", "owned"):
        wait_for(lambda name=name: ready_at(engine, names[name], 1), 20, f"{name} ready")
    wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 20, "workload ready")
    return names


def test_the_api_status_shows_outputs_dependencies_dependents_owner_and_owned(
    client: TestClient, linked: dict[str, str], tmp_path: Path
) -> None:
    conf, extra, owned, app = linked["conf"], linked["extra"], linked["owned"], linked["app"]
    shown = client.get(f"/v1/files/{conf}").json()["status"]
    assert shown["outputs"] == {"path": str(tmp_path / "conf"), "sha256": hashlib.sha256(b"v1\n").hexdigest()}
    assert shown["dependencies"] == []
    assert shown["dependents"] == [
        {"ref": f"File/{extra}", "phase": "Ready", "ready": True},
        {"ref": f"Workload/{app}", "phase": "Ready", "ready": True},
    ]
    assert shown["owner"] is None
    assert shown["owned"] == [{"ref": f"File/{owned}", "phase": "Ready", "ready": True}]
    assert client.get(f"/v1/files/{owned}").json()["status"]["owner"] == {
        "ref": f"File/{conf}",
        "phase": "Ready",
        "ready": True,
    }
    workload = client.get(f"/v1/workloads/{app}").json()
    assert workload["status"]["dependencies"] == [
        {"ref": f"File/{conf}", "phase": "Ready", "ready": True},  # through the reference in its env
        {"ref": f"File/{extra}", "phase": "Ready", "ready": True},
    ]
    assert workload["status"]["outputs"]["running"] == 1
    assert workload["spec"]["env"] == {"CONFIG_SHA": _ref("file", conf, "sha256")}, "the row keeps what was written"


# --- describe, tree and plan ----------------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def _section(text: str, title: str) -> list[str]:
    """The indented lines under a section's title in `setpoint describe`."""
    lines = _lines(text)
    start = lines.index(title) + 1
    body = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        body.append(line.strip())
    return body


def test_describe_shows_dependencies_dependents_outputs_owner_owned_and_resolved_references(
    stack: dict, linked: dict[str, str]
) -> None:
    conf, extra, owned, app = linked["conf"], linked["extra"], linked["owned"], linked["app"]
    described = setpoint(stack, "describe", "file", conf)
    assert described.returncode == 0, described.stderr
    text = described.stdout
    assert _section(text, "Dependencies") == ["<none>"]
    assert _section(text, "Dependents") == [f"File/{extra}  Ready, ready", f"Workload/{app}  Ready, ready"]
    sha = hashlib.sha256(b"v1\n").hexdigest()
    assert f'sha256: "{sha}"' in _section(text, "Outputs")
    assert _section(text, "Owner") == ["<none>"]
    assert _section(text, "Owned") == [f"File/{owned}  Ready, ready"]
    assert _section(setpoint(stack, "describe", "files", owned).stdout, "Owner") == [f"File/{conf}  Ready, ready"]

    workload = setpoint(stack, "describe", "workload", app).stdout
    assert _section(workload, "Dependencies") == [f"File/{conf}  Ready, ready", f"File/{extra}  Ready, ready"]
    assert _section(workload, "References resolved") == [f'env: {{"CONFIG_SHA": "{sha}"}}']
    assert "pids:" in " ".join(_section(workload, "Outputs"))


def test_tree_draws_what_a_resource_depends_on_and_owns_recursively(stack: dict, linked: dict[str, str]) -> None:
    conf, extra, owned, app = linked["conf"], linked["extra"], linked["owned"], linked["app"]
    drawn = setpoint(stack, "tree", "workload", app)
    assert drawn.returncode == 0, drawn.stderr
    lines = _lines(drawn.stdout)
    assert lines[0] == f"Workload/{app}  Ready, ready"
    assert [line.lstrip("│├└─ ") for line in lines[1:]] == [
        f"depends on File/{conf}  Ready, ready",
        f"owns File/{owned}  Ready, ready",
        f"depends on File/{extra}  Ready, ready",
        f"depends on File/{conf}  Ready, ready  (shown above)",
    ]
    assert lines[2].startswith("│   └── owns"), "what the file owns hangs under the file"

    as_json = json.loads(setpoint(stack, "tree", "workloads", app, "-o", "json").stdout)
    assert as_json["ref"] == f"Workload/{app}" and as_json["ready"] is True
    assert [d["ref"] for d in as_json["dependencies"]] == [f"File/{conf}", f"File/{extra}"]
    assert as_json["dependencies"][0]["owned"][0]["ref"] == f"File/{owned}"
    assert as_json["dependencies"][1]["dependencies"] == [
        {"ref": f"File/{conf}", "phase": "Ready", "ready": True, "seen": True}
    ]
    as_yaml = yaml.safe_load(setpoint(stack, "tree", "file", owned, "-o", "yaml").stdout)
    assert as_yaml == {"ref": f"File/{owned}", "phase": "Ready", "ready": True, "dependencies": [], "owned": []}
    missing = setpoint(stack, "tree", "file", f"{app}-nothing")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_plan_resolves_references_as_the_worker_does_and_says_what_it_waits_for(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf, broken, reader, waiter = (f"{unique}-{n}" for n in ("conf", "broken", "reader", "waiter"))
    sql(
        engine,
        "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, 'v1', :i)",
        n=conf,
        p=str(tmp_path / "conf"),
        i=SLOW,
    )
    sql(
        engine,
        "INSERT INTO files (name, path, interval_seconds) VALUES (:n, :p, :i)",
        n=broken,
        p=str(tmp_path),
        i=SLOW,
    )
    wait_for(lambda: ready_at(engine, conf, 1), 20, "conf ready")
    wait_for(lambda: (s := status(engine, broken)) and s["phase"] == "Invalid", 20, "broken Invalid")
    sql(
        engine,
        "INSERT INTO files (name, path, content, paused, interval_seconds) VALUES (:n, :p, :c, true, :i)",
        n=reader,
        p=str(tmp_path / "reader"),
        c=f'config at {_ref("files", conf, "path")}, literal {{{{ "{{{{" }}}} kept',
        i=SLOW,
    )
    planned = setpoint(stack, "plan", "file", reader)
    assert planned.returncode == 3, planned.stdout + planned.stderr
    resolved = f"config at {tmp_path / 'conf'}, literal {{{{ kept"
    assert f"content: {json.dumps(resolved)}" in planned.stdout
    assert f"write {len(resolved)} bytes to {tmp_path / 'reader'}" in planned.stdout

    sql(
        engine,
        "INSERT INTO files (name, path, depends_on, interval_seconds) VALUES (:n, :p, :d, :i)",
        n=waiter,
        p=str(tmp_path / "waiter"),
        d=[f"file/{broken}"],
        i=SLOW,
    )
    waiting = setpoint(stack, "plan", "file", waiter)
    assert waiting.returncode == 3, waiting.stdout + waiting.stderr
    said = " ".join(waiting.stdout.split())
    assert f"file/{waiter} does not act yet, waiting for File/{broken}: Invalid" in said
    assert "DependencyNotReady" in said and f"write 0 bytes to {tmp_path / 'waiter'}" in said

    sql(engine, "UPDATE files SET content = :c WHERE name = :n", c=_ref("File", f"{unique}-later", "sha256"), n=reader)
    unresolved = setpoint(stack, "plan", "file", reader)
    assert unresolved.returncode == 1
    assert (
        f"cannot be planned until its references resolve: waiting for File/{unique}-later: does not exist"
        in " ".join(unresolved.stderr.split())
    )


def test_a_resource_that_turns_invalid_keeps_the_outputs_it_last_published(
    stack: dict, client: TestClient, engine: Engine, unique: str, tmp_path: Path
) -> None:
    sql(
        engine,
        "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, 'v1', :i)",
        n=unique,
        p=str(tmp_path / "conf"),
        i=SLOW,
    )
    wait_for(lambda: ready_at(engine, unique, 1), 20, "ready")
    published = {"path": str(tmp_path / "conf"), "sha256": hashlib.sha256(b"v1").hexdigest()}
    assert status(engine, unique)["outputs"] == published
    sql(engine, "UPDATE files SET path = :p WHERE name = :n", p=str(tmp_path), n=unique)  # a folder: Invalid
    wait_for(
        lambda: (s := status(engine, unique)) and s["phase"] == "Invalid" and s["observed_generation"] == 2,
        20,
        "invalid",
    )
    assert status(engine, unique)["outputs"] == published, "what dependents reference is not erased by a failure"
    assert client.get(f"/v1/files/{unique}").json()["status"]["outputs"] == published
