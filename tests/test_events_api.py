"""`GET /v1/events` on a real `setpoint api` (uvicorn) with a token, read by an HTTP client as browsers and scripts
read it: server-sent events that resume after Last-Event-ID without a gap or a repeat, filters, a JSON page.

The events are made by writing a status row as a worker would (Failed, then Ready again, and so on), on a resource
whose next reconcile is a day away, so the session's stack leaves it alone.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import Engine, text

from models.database import make_engine
from tests.conftest import Process, scratch_database, wait_for
from tests.helpers import sql, unwatched
from tests.test_api_safety import api_env, free_port, serving_api
from tests.test_events import of

TOKEN = "events-test-token-" + "x" * 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def base(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real API, its heartbeat quick and its streams few; yields its base URL."""
    env = {
        **api_env(database_url),
        "SETPOINT_API_TOKEN": TOKEN,
        "SETPOINT_EVENTS_HEARTBEAT_SECONDS": "0.5",
        "SETPOINT_EVENTS_MAX_CLIENTS": "3",
    }
    with serving_api(env, tmp_path_factory.mktemp("api") / "api.log") as url:
        yield url


FAIL = """UPDATE statuses SET phase = 'Failed', ready = false, consecutive_failures = 1, last_error = CAST(:m AS text),
    last_reconcile_at = now(), conditions = jsonb_build_array(jsonb_build_object('type', 'Ready', 'status', 'False',
    'reason', 'ReconcileError', 'message', CAST(:m AS text)))
WHERE kind = 'File' AND name = :n"""
HEAL = """UPDATE statuses SET phase = 'Ready', ready = true, consecutive_failures = 0, last_error = NULL,
    observed_generation = 1, last_reconcile_at = now(), conditions = jsonb_build_array(jsonb_build_object(
    'type', 'Ready', 'status', 'True', 'reason', 'InSync', 'message', CAST(:m AS text)))
WHERE kind = 'File' AND name = :n"""


def resource(engine: Engine, name: str) -> None:
    unwatched(
        engine, "INSERT INTO files (name, path) VALUES (:n, '/nonexistent/events-api/' || CAST(:n AS varchar))", name
    )


def flip(engine: Engine, name: str, i: int) -> None:
    """One transition, one event: Failed at even steps, Recovered at odd ones; the message says which step."""
    sql(engine, FAIL if i % 2 == 0 else HEAL, n=name, m=f"step {i}")


class Stream:
    """One SSE connection: its events and comments as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()
        self.comments: list[str] = []

    def next_event(self, timeout_s: float = 10) -> dict[str, Any]:
        """The next event (its `id:`, `event:` and parsed `data:`); comments on the way are kept."""
        deadline = time.monotonic() + timeout_s
        fields: dict[str, str] = {}
        for line in self._lines:  # the heartbeat keeps this from blocking past the deadline
            if line.startswith(":"):
                self.comments.append(line)
            elif line:
                key, _, value = line.partition(": ")
                fields[key] = value
            elif fields:
                return {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"no event within {timeout_s}s")

    def next_comment(self) -> str:
        """The next comment line (events on the way are passed over)."""
        for line in self._lines:
            if line.startswith(":"):
                self.comments.append(line)
                return line
        raise AssertionError("the stream ended")

    def opened(self) -> None:
        """Wait for the stream's first comment: it has its starting point, so what is committed next comes."""
        assert self.next_comment() == ": listening"


@contextmanager
def stream(base: str, headers: dict[str, str] | None = None, **params: Any) -> Iterator[Stream]:
    with httpx.stream(
        "GET", f"{base}/v1/events", params=params, headers={**AUTH, **(headers or {})}, timeout=10
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


def test_a_client_that_reconnects_with_last_event_id_misses_nothing_while_events_keep_coming(
    base: str, engine: Engine, unique: str
) -> None:
    resource(engine, unique)
    total = 60
    writer = threading.Thread(target=lambda: [flip(engine, unique, i) or time.sleep(0.02) for i in range(total)])
    received: list[dict[str, Any]] = []
    with stream(base, name=unique) as first:
        first.opened()
        writer.start()
        while len(received) < 15:
            received.append(first.next_event())
    time.sleep(0.3)  # disconnected while the writer goes on
    with stream(base, {"Last-Event-ID": str(received[-1]["id"])}, name=unique) as second:
        while len(received) < total:
            received.append(second.next_event())
    writer.join()
    stored = of(engine, unique)
    assert [e["id"] for e in received] == [e["id"] for e in stored], "every event once, in order"
    assert [e["data"]["message"] for e in received] == [
        f"step {i}" if i % 2 == 0 else f"recovered: step {i}" for i in range(total)
    ]
    assert [e["event"] for e in received[:2]] == ["Failed", "Recovered"] and received[0]["data"] == stored[0]


def test_without_an_id_a_stream_starts_from_now_and_after_resumes_like_the_header(
    base: str, engine: Engine, unique: str
) -> None:
    resource(engine, unique)
    flip(engine, unique, 0)
    wait_for(lambda: len(of(engine, unique)) == 1, 10, "the first event published")
    with stream(base, name=unique) as now:
        now.opened()
        flip(engine, unique, 1)
        assert now.next_event()["data"]["message"] == "recovered: step 1", "the earlier event is not replayed"
    with stream(base, name=unique, after=0) as replay:
        assert [replay.next_event()["data"]["message"] for _ in range(2)] == ["step 0", "recovered: step 1"]


def test_filters_by_type_kind_and_name_and_idle_streams_get_heartbeats(base: str, engine: Engine, unique: str) -> None:
    resource(engine, unique)
    resource(engine, f"{unique}-other")
    with stream(base, type="Recovered", kind="files", name=[unique, f"{unique}-other"]) as chosen:
        chosen.opened()
        for i in range(4):
            flip(engine, unique, i)
            flip(engine, f"{unique}-other", i)
        got = [chosen.next_event() for _ in range(4)]
        assert {e["event"] for e in got} == {"Recovered"}
        assert sorted((e["data"]["name"], e["data"]["message"]) for e in got) == sorted(
            (n, f"recovered: step {i}") for n in (unique, f"{unique}-other") for i in (1, 3)
        )
    with stream(base, kind="Workload", name=unique) as none:
        none.opened()
        flip(engine, unique, 4)
        started = time.monotonic()
        assert none.next_comment() == ": ping" and none.next_comment() == ": ping", "no event of theirs: pings"
        assert time.monotonic() - started < 3


def test_a_json_page_of_recent_events_newest_last(base: str, engine: Engine, unique: str) -> None:
    resource(engine, unique)
    for i in range(3):
        flip(engine, unique, i)
    page = httpx.get(f"{base}/v1/events", params={"name": unique}, headers={**AUTH, "Accept": "application/json"})
    assert page.status_code == 200 and page.headers["content-type"] == "application/json"
    assert [e["message"] for e in page.json()] == ["step 0", "recovered: step 1", "step 2"]
    last_two = httpx.get(f"{base}/v1/events", params={"name": unique, "stream": "false", "limit": 2}, headers=AUTH)
    assert [e["message"] for e in last_two.json()] == ["recovered: step 1", "step 2"]
    after_first = httpx.get(
        f"{base}/v1/events", params={"name": unique, "stream": "false", "after": page.json()[0]["id"]}, headers=AUTH
    )
    assert [e["message"] for e in after_first.json()] == ["recovered: step 1", "step 2"]


@pytest.mark.parametrize(
    ("params", "headers", "where"),
    [
        ({"type": "Exploded"}, {}, ["query", "type"]),
        ({"kind": "spaceship"}, {}, ["query", "kind"]),
        ({}, {"Last-Event-ID": "yesterday"}, ["header", "Last-Event-ID"]),
        ({"after": "-1"}, {}, ["query", "after"]),
    ],
)
def test_bad_input_is_422_naming_it(
    base: str, params: dict[str, str], headers: dict[str, str], where: list[str]
) -> None:
    answer = httpx.get(f"{base}/v1/events", params=params, headers={**AUTH, **headers})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == where, answer.text


def test_events_need_the_token(base: str) -> None:
    assert httpx.get(f"{base}/v1/events", params={"stream": "false"}).status_code == 401


def test_resuming_where_events_were_pruned_or_never_given_is_410_gone(servers: tuple[str, str], tmp_path: Path) -> None:
    """Events 2-6 pruned: resuming after 1 would skip them unseen, and after 999999 (a restored database) would wait
    in silence; both are 410 naming what was sent, as a Kubernetes watch is told to start again."""
    with scratch_database(servers[0], "gone") as url:
        scratch = make_engine(url)
        port = free_port()
        env = {**api_env(url), "SETPOINT_API_TOKEN": TOKEN}
        api = Process([sys.executable, "-m", "setpoint.cli", "api", "--port", str(port)], env, tmp_path / "api.log")
        base = f"http://127.0.0.1:{port}"
        try:
            sql(
                scratch,
                "INSERT INTO events (id, kind, name, type, message) SELECT nextval('events_id_seq'), 'File', 'f', "
                "'Ready', 'event ' || i FROM generate_series(1, 7) AS i",
            )
            sql(scratch, "DELETE FROM events WHERE id BETWEEN 2 AND 6")
            wait_for(lambda: b"200 OK" in _raw(port, "GET /healthz HTTP/1.0\r\n\r\n"), 30, "api answering")
            for headers, params, where in [
                ({"Last-Event-ID": "1"}, {}, ["header", "Last-Event-ID"]),
                ({"Last-Event-ID": "999999"}, {}, ["header", "Last-Event-ID"]),
                ({}, {"after": 3}, ["query", "after"]),
                ({}, {"after": 1, "stream": "false"}, ["query", "after"]),
            ]:
                answer = httpx.get(f"{base}/v1/events", params=params, headers={**AUTH, **headers}, timeout=10)
                assert answer.status_code == 410 and answer.json()["loc"] == where, (headers, params, answer.text)
                assert "Start again from now" in answer.json()["detail"]
            assert (
                "after 1 up to 6 are gone (pruned)"
                in httpx.get(f"{base}/v1/events", headers={**AUTH, "Last-Event-ID": "1"}).json()["detail"]
            )
            with stream(base, {"Last-Event-ID": "6"}) as resumed:  # right after the gap: nothing is missed
                assert resumed.next_event()["data"]["message"] == "event 7"
            assert httpx.get(f"{base}/v1/events", params={"after": 7, "stream": "false"}, headers=AUTH).json() == [], (
                "the newest id itself is fine: nothing after it yet"
            )
        finally:
            api.stop()
            scratch.dispose()


def test_streams_beyond_the_limit_are_503(base: str, unique: str) -> None:
    with stream(base, name=unique) as a, stream(base, name=unique) as b, stream(base, name=unique) as c:
        for each in (a, b, c):
            each.opened()
        refused = httpx.get(f"{base}/v1/events", headers=AUTH)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    # the slots are given back when clients go
    wait_for(lambda: _opens(base), 10, "a stream open again")


def test_a_burst_of_connections_gets_no_more_streams_than_the_limit(base: str, unique: str) -> None:
    """12 clients connecting at once to a server allowing 3: at most 3 streams, the others 503 (the slot is taken
    before the answer is sent, not when its body starts)."""
    port = int(base.rsplit(":", 1)[1])
    request = f"GET /v1/events?name={unique} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(12)]
    try:
        for client in clients:  # every request on the wire before the server answers any
            client.sendall(request)
        statuses = sorted(int(_status_line(client).split()[1]) for client in clients)
    finally:
        for client in clients:
            client.close()
    assert statuses == [200] * 3 + [503] * 9, statuses
    wait_for(lambda: _opens(base), 10, "a stream open again once they are gone")


def _status_line(client: socket.socket) -> bytes:
    received = b""
    while b"\r\n" not in received:
        chunk = client.recv(4096)
        assert chunk, "the server closed the connection without an answer"
        received += chunk
    return received.split(b"\r\n", 1)[0]


def _opens(base: str) -> bool:
    with httpx.stream("GET", f"{base}/v1/events", headers=AUTH, timeout=5) as response:
        return response.status_code == 200


def test_a_client_too_slow_is_disconnected_not_buffered_without_bound(
    database_url: str, engine: Engine, unique: str, tmp_path: Path
) -> None:
    """A client that stops reading: once its queue (10 here) overflows the server ends its stream, and what it
    gets before the end is far less than what was sent; it would resume with its last id."""
    port = free_port()
    env = {**api_env(database_url), "SETPOINT_API_TOKEN": TOKEN, "SETPOINT_EVENTS_CLIENT_QUEUE": "10"}
    api = Process([sys.executable, "-m", "setpoint.cli", "api", "--port", str(port)], env, tmp_path / "api.log")
    many = 2_000
    try:
        wait_for(lambda: b"200 OK" in _raw(port, "GET /healthz HTTP/1.0\r\n\r\n"), 30, "api answering")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO files (name, path) SELECT :p || i, '/nonexistent/slow/' || i "
                    "FROM generate_series(1, :many) AS i"
                ),
                {"p": f"{unique}-", "many": many},
            )
            conn.execute(
                text("UPDATE statuses SET next_reconcile_at = now() + interval '1 day' WHERE name LIKE :p"),
                {"p": f"{unique}-%"},
            )
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(f"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
            wait_for(lambda: b": listening" in client.recv(4096), 10, "the stream open")
            for i in range(2):  # 4,000 events, none read meanwhile
                sql(engine, (FAIL if i % 2 == 0 else HEAL).replace("name = :n", "name LIKE :n"), n=f"{unique}-%", m="x")
            wait_for(lambda: "too slow, disconnected" in api.output(), 30, "the server giving up on the client")
            client.settimeout(10)
            received = b""
            while chunk := client.recv(65536):  # the rest of what was sent, then the end
                received += chunk
        assert 0 < received.count(b"\nevent: ") < 2 * many
    finally:
        api.stop()


def _raw(port: int, request: str) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(request.encode())
            return conn.recv(4096)
    except OSError:
        return b""
