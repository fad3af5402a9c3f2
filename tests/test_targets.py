"""How the server kinds speak of a server and of its failures: pure, against the drivers' own error types."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from controllers.http_object import url_problem
from worker import secrets, targets

URL = "postgres://admin@127.0.0.1:1/postgres?password=Hunter2Secret&sslmode=disable"


def test_a_server_is_shown_without_a_password_in_its_userinfo_or_its_query() -> None:
    assert targets.shown(targets.parse(URL)) == "postgresql://admin@127.0.0.1:1/postgres"
    assert targets.shown(targets.parse("mysql://root:pw@db:3306/")) == "mysql://root:***@db:3306/"
    with secrets.recording() as used:
        secrets.remember(URL)
    said = "connect postgresql://admin@127.0.0.1:1/app?password=Hunter2Secret failed"
    assert "Hunter2Secret" not in secrets.scrub(said, used)


def _error(sqlstate: str | None, message: str, kind: type[Exception] = OperationalError) -> Exception:
    class Failure(psycopg.OperationalError):
        pass

    failure = Failure(message)
    failure.sqlstate = sqlstate  # type: ignore[misc]
    return kind("statement", {}, failure)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("sqlstate", "message", "verdict"),
    [
        ("57P01", "FATAL:  terminating connection due to administrator command", targets.ServerUnreachable),
        ("53300", "FATAL:  remaining connection slots are reserved", targets.ServerUnreachable),
        ("28P01", 'FATAL:  password authentication failed for user "app"', targets.AccessDenied),
        ("3D000", 'FATAL:  database "nope" does not exist', targets.AccessDenied),
        (None, 'connection failed: FATAL:  role "nobody" does not exist', targets.AccessDenied),
        (None, "connection failed: FATAL:  the database system is starting up", targets.ServerUnreachable),
        (None, "connection failed: Connection refused", targets.ServerUnreachable),
    ],
)
def test_a_servers_failures_are_told_apart_by_its_code_before_its_words(
    sqlstate: str | None, message: str, verdict: type[Exception]
) -> None:
    error = _error(sqlstate, message)
    assert isinstance(error, OperationalError)
    told = targets.classify(targets.parse(URL), error)
    assert isinstance(told, verdict)
    assert "Hunter2Secret" not in str(told)


def test_an_error_of_the_statement_itself_is_left_to_the_controller() -> None:
    error = _error("42601", "syntax error", ProgrammingError)
    assert isinstance(error, ProgrammingError)
    assert targets.classify(targets.parse(URL), error) is error


def test_an_http_objects_url_may_not_carry_credentials() -> None:
    assert url_problem("https://user:token@api.example.com/v1/x") is not None
    assert url_problem("https://api.example.com/v1/x") is None
