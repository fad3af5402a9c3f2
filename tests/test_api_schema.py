"""Property-based: schemathesis sends what the OpenAPI schema allows and much that it does not; no answer is a 5xx.

It runs on a database of its own that no scheduler or worker watches: the files and workloads it makes up
(any absolute path, any command) are stored and read back, and never acted on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from api.app import create_app
from setpoint.settings import Settings
from tests.conftest import scratch_database

# The schema depends on the registered kinds only, not on the database: read at import, so that pytest
# collects one test per operation. (`schemathesis.pytest.from_fixture` fails under pytest 9.2: no `_nodeid`.)
schema = schemathesis.openapi.from_dict(
    create_app(
        Settings(database_url="postgresql://schema-only.invalid/none", api_token=None), insecure_no_auth=True
    ).openapi()
).exclude(path="/v1/events")  # a stream that never ends by itself: tests/test_events_api.py covers it


@pytest.fixture(scope="module")
def app(servers: tuple[str, str]) -> Iterator[FastAPI]:
    """The API on a migrated database of this module's own, dropped afterwards."""
    with scratch_database(servers[0], "schema") as url:
        app = create_app(Settings(database_url=url, api_token=None), insecure_no_auth=True)
        with TestClient(app):  # its lifespan disposes of the app's engine before the database is dropped
            yield app


# Not the checks of which data is accepted: some limits (an absolute path, a known deletion policy) are the
# database's CHECK constraints, absent from the spec's schema; and pydantic's lax mode accepts "5" as 5.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    unsupported_method,
    allow_header_conformance,
]


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_answer_is_a_5xx_or_strays_from_the_schema(app: FastAPI, case: schemathesis.Case) -> None:
    # served without a token, the API answers only loopback host names (DNS rebinding): call it as localhost
    case.call_and_validate(app=app, base_url="http://localhost", checks=CHECKS)
