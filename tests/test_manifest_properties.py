"""Property: any manifest either applies whole or is refused with InvalidDocument naming it, nothing half-applied.

Runs on a database of its own that no worker watches, so the generated paths and commands are never acted on.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
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


@pytest.fixture
def engine(fresh: dict) -> Any:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    yield engine
    engine.dispose()


def names_present(engine: Any) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT name FROM files UNION SELECT name FROM workloads")).scalars())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(docs, min_size=1, max_size=4))
def test_a_manifest_applies_whole_or_not_at_all(engine: Any, batch: list[Document]) -> None:
    before = names_present(engine)
    try:
        documents.apply(engine, batch)
    except InvalidDocument as error:
        assert names_present(engine) == before, "a refused manifest changed nothing"
        assert any(doc.label in str(error) for doc in batch), f"the error names the document: {error}"
        return
    assert {doc.name for doc in batch} <= names_present(engine)
