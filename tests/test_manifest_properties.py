"""Property: any manifest either applies whole or is refused with InvalidDocument naming it, nothing half-applied.

Runs on a database of its own that no worker watches, so the generated paths and commands are never acted on.
Two generators: wild documents (mostly refused by the Python-side checks before any SQL runs), and mostly valid
batches in which a document may break a rule only the database holds (a path another File already uses, a path
that is not normalized, two health checks, a malformed node name), so the refusal comes after earlier documents of
the same batch were written inside the transaction.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from models.database import make_engine
from resources import documents
from resources.manifest import Document
from setpoint.errors import InvalidDocument

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
specs = st.one_of(
    st.fixed_dictionaries(
        {"path": st.one_of(st.text(max_size=20), st.just("/tmp/x")).map(str)},
        optional={"mode": st.sampled_from(["0644", "999", "x"]), "content": st.text(max_size=20)},
    ),
    st.fixed_dictionaries({"command": st.text(max_size=20)}, optional={"replicas": st.integers(-5, 2000)}),
    st.dictionaries(st.sampled_from(["path", "command", "replicas", "paused", "colour", "labels"]), values, max_size=4),
)
docs = st.builds(
    Document,
    kind=st.sampled_from(["file", "Files", "workload", "gizmo"]),
    name=st.one_of(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True), st.text(max_size=12)),
    spec=specs,
    source=st.just("generated"),
)

names = st.sampled_from([f"r{i}" for i in range(8)])
# A few paths, so two Files of one batch (or of earlier batches) often share one: files.path is unique.
paths = st.sampled_from([f"/srv/setpoint-property/{p}" for p in ("a", "b", "c", "d")])
valid_files = st.builds(
    Document,
    kind=st.just("File"),
    name=names,
    spec=st.fixed_dictionaries({"path": paths}, optional={"content": st.text(max_size=10), "mode": st.just("0600")}),
    source=st.just("valid"),
)
valid_workloads = st.builds(
    Document,
    kind=st.just("Workload"),
    name=names,
    spec=st.fixed_dictionaries({"command": st.just("sleep 60")}, optional={"replicas": st.integers(0, 3)}),
    source=st.just("valid"),
)
# Each passes documents.check and is refused only by a CHECK the database holds.
database_only_refusals = st.one_of(
    st.builds(
        Document,
        kind=st.just("File"),
        name=names,
        spec=st.sampled_from([{"path": "/srv//twice"}, {"path": "/srv/dir/"}, {"path": "/srv/./here"}]),
        source=st.just("refused by the database"),
    ),
    st.builds(
        Document,
        kind=st.just("Workload"),
        name=names,
        spec=st.sampled_from(
            [
                {"command": "true", "health_command": "true", "health_url": "http://127.0.0.1/"},
                {"command": "true", "node": "Not A Node"},
            ]
        ),
        source=st.just("refused by the database"),
    ),
)
mostly_valid = st.one_of(valid_files, valid_files, valid_workloads, valid_workloads, database_only_refusals)


@pytest.fixture
def engine(fresh: dict) -> Any:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    yield engine
    engine.dispose()


def names_present(engine: Any) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT name FROM files UNION SELECT name FROM workloads")).scalars())


def stored(engine: Any) -> dict[str, list[Any]]:
    """Every row of the kinds' tables and of statuses, whole: what a refused manifest must leave as it was."""
    with engine.connect() as conn:
        return {
            table: sorted(
                conn.execute(text(f"SELECT to_jsonb(t)::text FROM {table} AS t")).scalars()  # noqa: S608
            )
            for table in ("files", "workloads", "statuses")
        }


def applies_whole_or_not_at_all(engine: Any, batch: list[Document]) -> bool:
    """Apply `batch`; True if it applied, False if it was refused and nothing it holds was stored."""
    before = stored(engine)
    try:
        documents.apply(engine, batch)
    except InvalidDocument as error:
        assert stored(engine) == before, f"a refused manifest changed nothing: {error}"
        named = any(doc.label in str(error) or f"/{doc.name} is declared twice" in str(error) for doc in batch)
        assert named, f"the error names the document: {error}"
        return False
    assert {doc.name for doc in batch} <= names_present(engine)
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(docs, min_size=1, max_size=4))
def test_a_manifest_applies_whole_or_not_at_all(engine: Any, batch: list[Document]) -> None:
    applies_whole_or_not_at_all(engine, batch)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(mostly_valid, min_size=1, max_size=5, unique_by=lambda d: (d.kind, d.name)))
@example(
    batch=[
        Document("File", "first", {"path": "/srv/setpoint-property/only"}, "valid"),
        Document("File", "second", {"path": "/srv/setpoint-property/only"}, "refused by the database"),
    ]
)
def test_a_manifest_the_database_refuses_midway_stores_nothing(engine: Any, batch: list[Document]) -> None:
    applies_whole_or_not_at_all(engine, batch)
