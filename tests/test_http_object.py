"""HTTPObject: a JSON object kept at a URL of a real local REST API (a threaded http.server in this process, objects
in a dict), reconciled by the shared real stack: created, put back, deleted; 5xx and 429 retried (Retry-After
honoured, measured from the server's own request log); 400 reported with its body; a server down waited for;
header values from a secret sent but never shown."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError, ProgrammingError

from controllers.http_object import Api, ApiRefused, PutObject, differences, location, retry_after_s, url_problem
from models.database import make_engine
from tests.conftest import start_scheduler, start_worker, wait_for
from tests.helpers import ready_at, runs, sql, stack_log, status, unwatched
from worker.secrets import Redacted

KIND = "HTTPObject"


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request as the server received it, and what it answered."""

    at: float
    method: str
    path: str
    headers: dict[str, str]
    status: int


class FakeApi:
    """A REST API on 127.0.0.1: PUT stores the object at its path (adding its `id` and a `revision` of its own),
    POST to a collection creates `<collection>/<n>` and answers its Location, GET reads, DELETE removes.
    `script(method, path, ...)` makes the next such requests answer as told instead."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.log: list[Seen] = []
        self.lock = threading.Lock()
        self._scripted: dict[tuple[str, str], list[tuple[int, dict[str, str], str]]] = {}
        self._next_id = 1
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    def start(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with api.lock:
                    queued = api._scripted.get((self.command, self.path))
                    code, headers, body = queued.pop(0) if queued else api._answer(self.command, self.path, raw)
                    api.log.append(Seen(time.monotonic(), self.command, self.path, dict(self.headers), code))
                data = body.encode()
                self.send_response(code)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, method: str, path: str, *answers: tuple[int, dict[str, str], str]) -> None:
        with self.lock:
            self._scripted.setdefault((method, path), []).extend(answers)

    def seen(self, path: str, method: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.log if s.path == path and (method is None or s.method == method)]

    def get(self, path: str) -> dict[str, Any] | None:
        with self.lock:
            found = self.objects.get(path)
            return json.loads(json.dumps(found)) if found is not None else None

    def edit(self, path: str, **fields: Any) -> None:
        with self.lock:
            self.objects[path].update(fields)

    def _answer(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, str], str]:
        missing = (404, {}, json.dumps({"error": f"{path} not found"}))
        if method == "GET":
            found = self.objects.get(path)
            return (200, {}, json.dumps(found)) if found is not None else missing
        if method == "DELETE":
            return (204, {}, "") if self.objects.pop(path, None) is not None else missing
        body = json.loads(raw)
        if method == "PUT":
            old = self.objects.get(path)
            revision = (old or {}).get("revision", 0) + 1
            self.objects[path] = {"id": path.rsplit("/", 1)[-1], "revision": revision, **body}
            return (200 if old else 201), {}, json.dumps(self.objects[path])
        ident = str(self._next_id)  # POST
        self._next_id += 1
        where = f"{path.rstrip('/')}/{ident}"
        self.objects[where] = {"id": ident, **body}
        return 201, {"Location": where}, json.dumps(self.objects[where])


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def forgotten(engine: Engine, unique: str) -> Iterator[None]:
    """Rows and secrets this test made go afterwards, without tearing anything down (the server is gone)."""
    yield
    sql(engine, "UPDATE http_objects SET deletion_policy = 'orphan' WHERE name LIKE :p", p=f"{unique}%")
    sql(engine, "DELETE FROM http_objects WHERE name LIKE :p", p=f"{unique}%")
    sql(engine, "DELETE FROM secrets WHERE name LIKE :p", p=f"{unique}%")


def _insert(engine: Engine, name: str, body: dict[str, Any], **columns: Any) -> None:
    values = {"name": name, "body": json.dumps(body), "interval_seconds": 300, **columns}
    placeholders = ", ".join("CAST(:body AS jsonb)" if c == "body" else f":{c}" for c in values)
    sql(engine, f"INSERT INTO http_objects ({', '.join(values)}) VALUES ({placeholders})", **values)


def _said(engine: Engine, name: str) -> str:
    """What status says, as an admin reads it: the Ready condition's message."""
    row = status(engine, name, KIND)
    if row is None:
        return ""
    return next((c["message"] for c in row["conditions"] or [] if c["type"] == "Ready"), "")


def _gaps(requests: list[Seen]) -> list[float]:
    return [round(b.at - a.at, 2) for a, b in zip(requests, requests[1:], strict=False)]


# --- what the controller decides, without a server --------------------------------------------------------------


def test_in_sync_means_every_desired_field_equal_at_any_depth_and_extra_remote_fields_ignored() -> None:
    want = {"color": "blue", "size": {"w": 1, "h": 2}, "tags": ["a", {"k": 1}], "on": True}
    have = {"id": "x", "color": "blue", "size": {"w": 1.0, "h": 2, "unit": "cm"}, "tags": ["a", {"k": 1, "z": 0}]}
    assert differences(want, {**have, "on": True}) == []
    assert differences(want, {**have, "on": 1}) == ["on"]  # true is not 1
    assert differences(want, {**have, "on": True, "size": {"w": 1, "h": 3}}) == ["size.h"]
    assert differences(want, {**have, "on": True, "tags": ["a"]}) == ["tags"]
    assert differences(want, {**have, "on": True, "tags": ["a", {"k": 2}]}) == ["tags[1].k"]
    assert differences(want, {"color": "blue"}) == ["size", "tags", "on"]


def test_retry_after_is_read_as_seconds_or_a_date_and_bounded() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert retry_after_s("7", now) == 7
    assert retry_after_s(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert retry_after_s(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert retry_after_s("999999", now) == 3600
    assert retry_after_s("soon", now) is None and retry_after_s(None, now) is None


def test_only_http_urls_with_a_host_are_taken() -> None:
    assert url_problem("https://api.example.com/v1/items/1") is None
    for bad in ("ftp://example.com/x", "http://", "file:///etc/passwd", "http://exa mple.com/", "http://h:port/"):
        assert url_problem(bad), bad


def test_an_action_never_shows_a_header_value() -> None:
    action = PutObject("http://api/x", {"a": 1}, Api((("Authorization", Redacted("Bearer s3cr3t-tok")),)), ("a",))
    assert "s3cr3t" not in str(action) and "s3cr3t" not in repr(action)
    assert str(action) == "PUT http://api/x: replace (a differ)"


def test_a_location_is_taken_from_the_answer_on_the_same_server_only() -> None:
    teams = "http://api.test/v1/teams"
    assert location(teams, httpx2.Response(201, headers={"Location": "/v1/teams/7"})) == "http://api.test/v1/teams/7"
    assert location(teams, httpx2.Response(201, json={"id": "a b"})) == "http://api.test/v1/teams/a%20b"
    with pytest.raises(ApiRefused, match="another server"):  # the token would follow it there
        location(teams, httpx2.Response(201, headers={"Location": "http://elsewhere.test/steal"}))
    with pytest.raises(ApiRefused, match="without a Location header or an id"):
        location(teams, httpx2.Response(201, json={"name": "ops"}))


def test_the_workers_role_keeps_locations_and_an_orphaned_row_forgets_its_own(engine: Engine, unique: str) -> None:
    unwatched(
        engine,
        "INSERT INTO http_objects (name, create_url, paused, deletion_policy) "
        "VALUES (:n, 'http://127.0.0.1:9/teams', true, 'orphan')",
        unique,
    )
    with engine.begin() as conn:
        uid = conn.execute(text("SELECT uid FROM http_objects WHERE name = :n"), {"n": unique}).scalar()
        conn.execute(text("SET LOCAL ROLE setpoint_worker"))
        conn.execute(text("INSERT INTO http_object_locations (uid, url) VALUES (:u, 'http://127.0.0.1:9/teams/1')"),
                     {"u": uid})  # fmt: skip
    with pytest.raises(ProgrammingError, match="permission denied"), engine.begin() as conn:
        conn.execute(text("SET LOCAL ROLE setpoint_api"))
        conn.execute(text("DELETE FROM http_object_locations WHERE uid = :u"), {"u": uid})
    with engine.begin() as conn:  # through the API's role, orphaning the remote object
        conn.execute(text("SET LOCAL ROLE setpoint_api"))
        conn.execute(text("DELETE FROM http_objects WHERE name = :n"), {"n": unique})
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM http_object_locations WHERE uid = :u"), {"u": uid}).scalar() == 0


# --- against a real API, on the real stack ----------------------------------------------------------------------


def test_an_object_is_created_put_back_after_a_remote_change_and_deleted_with_its_row(
    stack: dict[str, str], engine: Engine, unique: str, api: FakeApi, forgotten: None
) -> None:
    path = f"/items/{unique}"
    _insert(engine, unique, {"color": "blue", "size": {"w": 1, "h": 2}}, url=api.url(path), interval_seconds=1)
    row = wait_for(lambda: ready_at(engine, unique, 1, KIND), 20, "created")
    assert api.get(path) == {"id": unique, "revision": 1, "color": "blue", "size": {"w": 1, "h": 2}}
    assert row["outputs"] == {"url": api.url(path), "id": unique}
    assert [r["actions"] for r in runs(engine, unique, KIND)][0] == [f"PUT {api.url(path)}: create"]

    api.edit(path, note="added by the API")  # a field only the remote object has: still in sync
    gets = len(api.seen(path, "GET"))
    wait_for(lambda: len(api.seen(path, "GET")) >= gets + 2, 20, "two more looks")
    assert len(api.seen(path, "PUT")) == 1, "an extra remote field is not drift"

    api.edit(path, size={"w": 1, "h": 3})  # changed behind Setpoint's back
    wait_for(lambda: (api.get(path) or {}).get("size") == {"w": 1, "h": 2}, 20, "put back")
    put_back = [r for r in runs(engine, unique, KIND) if r["actions"]][-1]
    assert put_back["actions"] == [f"PUT {api.url(path)}: replace (size.h differ)"]

    sql(engine, "DELETE FROM http_objects WHERE name = :n", n=unique)
    wait_for(lambda: status(engine, unique, KIND) is None, 20, "torn down")
    assert api.get(path) is None
    assert [s.status for s in api.seen(path, "DELETE")] == [204]


def test_an_object_created_by_post_is_found_again_at_its_location_and_deleted_there(
    stack: dict[str, str], engine: Engine, unique: str, api: FakeApi, forgotten: None
) -> None:
    collection = f"/teams-{unique}"
    _insert(engine, unique, {"title": "ops"}, create_url=api.url(collection), interval_seconds=1)
    row = wait_for(lambda: ready_at(engine, unique, 1, KIND), 20, "created")
    where = f"{collection}/1"
    assert row["outputs"] == {"url": api.url(where), "id": "1"}
    with engine.connect() as conn:
        kept = conn.execute(
            text("SELECT l.url FROM http_object_locations AS l JOIN http_objects AS o USING (uid) WHERE o.name = :n"),
            {"n": unique},
        ).scalar()
    assert kept == api.url(where)  # in the database: any worker, or this one restarted, finds it there

    wait_for(lambda: len(api.seen(where, "GET")) >= 3, 20, "looked at where it was put")
    assert len(api.seen(collection, "POST")) == 1, "never created twice"
    api.edit(where, title="dev")
    wait_for(lambda: (api.get(where) or {}).get("title") == "ops", 20, "put back at its location")
    with api.lock:
        del api.objects[where]  # deleted behind Setpoint's back: created again, at the location now answered
    again = f"{collection}/2"
    wait_for(lambda: (status(engine, unique, KIND) or {}).get("outputs", {}).get("url") == api.url(again), 20, "again")
    assert len(api.seen(collection, "POST")) == 2
    where, kept = again, api.url(again)

    sql(engine, "DELETE FROM http_objects WHERE name = :n", n=unique)
    wait_for(lambda: status(engine, unique, KIND) is None, 20, "torn down")
    assert api.get(where) is None
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM http_object_locations WHERE url = :u"), {"u": kept}).scalar() == 0
        )


def test_an_object_with_both_urls_is_posted_once_and_never_again_when_the_api_puts_it_elsewhere(
    stack: dict[str, str], engine: Engine, unique: str, api: FakeApi, forgotten: None
) -> None:
    collection = f"/teams-{unique}"
    _insert(engine, unique, {"title": "ops"}, url=api.url(f"{collection}/1"), create_url=api.url(collection))
    wait_for(lambda: ready_at(engine, unique, 1, KIND), 20, "created by POST, found at its url")
    assert api.get(f"{collection}/1") == {"id": "1", "title": "ops"}

    wrong = f"{unique}-wrong"
    _insert(engine, wrong, {"title": "dev"}, url=api.url(f"{collection}/9"), create_url=api.url(collection))
    wait_for(lambda: (status(engine, wrong, KIND) or {}).get("phase") == "Failed", 20, "refused")
    assert f"put the object at {api.url(collection)}/2, not at url {api.url(collection)}/9" in _said(engine, wrong)
    assert len(api.seen(collection, "POST")) == 2, "one POST each: no loop creating copies"


def test_a_location_survives_the_worker_killed_and_another_one_taking_over(
    fresh: dict[str, str], tmp_path: Path, unique: str, api: FakeApi
) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker(fresh, tmp_path / "worker.log")
    replacement = None
    try:
        collection = f"/teams-{unique}"
        _insert(engine, unique, {"title": "ops"}, create_url=api.url(collection), interval_seconds=1)
        wait_for(lambda: ready_at(engine, unique, 1, KIND), 60, "created")
        worker.kill()  # every process of it, at once
        elsewhere = {**fresh, "SETPOINT_STATE_DIR": str(tmp_path / "another-host")}
        replacement = start_worker(elsewhere, tmp_path / "replacement.log", name="w2")
        looked = len(api.seen(f"{collection}/1", "GET"))
        wait_for(lambda: len(api.seen(f"{collection}/1", "GET")) >= looked + 3, 60, "the other worker looking")
        assert len(api.seen(collection, "POST")) == 1, "the other worker found the object, and made no second one"
        assert api.get(f"{collection}/1") == {"id": "1", "title": "ops"}
    finally:
        if replacement is not None:
            replacement.stop()
        scheduler.stop()
        engine.dispose()


def test_a_server_answering_500_then_200_converges(
    stack: dict[str, str], engine: Engine, unique: str, api: FakeApi, forgotten: None
) -> None:
    path = f"/items/{unique}"
    api.script("GET", path, (500, {}, '{"error": "database is restarting"}'), (503, {}, "try later"))
    _insert(engine, unique, {"color": "red"}, url=api.url(path))
    wait_for(lambda: ready_at(engine, unique, 1, KIND), 20, "converged")
    history = runs(engine, unique, KIND)
    assert [r["outcome"] for r in history] == ["failed", "failed", "changed"]
    assert 'answered 500 Internal Server Error: {"error": "database is restarting"}' in history[0]["error"]
    assert api.get(path) == {"id": unique, "revision": 1, "color": "red"}


def test_429_with_retry_after_is_honoured(
    stack: dict[str, str], engine: Engine, unique: str, api: FakeApi, forgotten: None
) -> None:
    path = f"/items/{unique}"
    # 2 s: within the quick Celery retries of the test stack (3 s); 4 s: beyond them, the scheduler's to keep.
    api.script("GET", path, (429, {"Retry-After": "2"}, "slow down"), (429, {"Retry-After": "4"}, "slow down"))
    _insert(engine, unique, {"color": "red"}, url=api.url(path))
    wait_for(lambda: "retry after 2s" in _said(engine, unique), 10, "status says when")
    wait_for(lambda: ready_at(engine, unique, 1, KIND), 30, "converged")
    gets = api.seen(path, "GET")[:3]  # then the 404 that led to the PUT (and the look after it)
    assert [s.status for s in gets] == [429, 429, 404]
    gaps = _gaps(gets)
    print(f"gaps between attempts after Retry-After 2 and 4: {gaps} s")
    assert gaps[0] >= 2 and gaps[1] >= 4
    assert gaps[0] < 2 + 3 and gaps[1] < 4 + 3, "and not much later either"


def test_400_is_reported_with_the_body_cut_short_and_not_retried_until_the_row_changes(
    stack: dict[str, str], engine: Engine, unique: str, api: FakeApi, forgotten: None
) -> None:
    path = f"/items/{unique}"
    api.script("PUT", path, (400, {}, '{"error": "size must be positive", "detail": "' + "x" * 1000 + '"}'))
    _insert(engine, unique, {"size": -1}, url=api.url(path))
    wait_for(lambda: (status(engine, unique, KIND) or {}).get("phase") == "Failed", 20, "failed")
    row = status(engine, unique, KIND)
    assert row is not None and row["next_reconcile_at"] is None, "permanent: not retried"
    said = _said(engine, unique)
    assert f"PUT {api.url(path)} answered 400 Bad Request: " in said and "size must be positive" in said
    assert said.endswith("…") and len(said) < 500, said
    assert [s.status for s in api.seen(path, "PUT")] == [400]

    sql(engine, "UPDATE http_objects SET body = '{\"size\": 1}' WHERE name = :n", n=unique)
    wait_for(lambda: ready_at(engine, unique, 2, KIND), 20, "fixed row applied")
    assert api.get(path) == {"id": unique, "revision": 1, "size": 1}


def test_a_server_down_is_said_in_status_and_its_objects_converge_once_it_is_back_while_others_go_on(
    stack: dict[str, str], engine: Engine, unique: str, api: FakeApi, forgotten: None
) -> None:
    path = f"/items/{unique}"
    api.stop()
    _insert(engine, unique, {"color": "green"}, url=api.url(path))
    said = wait_for(lambda: "ApiUnreachable" in _said(engine, unique) and _said(engine, unique), 20, "unreachable")
    assert said.startswith(f"will retry: ApiUnreachable: GET {api.url(path)}: ConnectError"), said

    other = FakeApi()  # another API, up: its object is not held up by the one down
    other.start()
    try:
        _insert(engine, f"{unique}-other", {"color": "blue"}, url=other.url("/x"))
        wait_for(lambda: ready_at(engine, f"{unique}-other", 1, KIND), 20, "the other object")
    finally:
        other.stop()

    api.start()  # the same port
    back = time.monotonic()
    wait_for(lambda: ready_at(engine, unique, 1, KIND), 30, "converged once back")
    print(f"server back -> object ready: {time.monotonic() - back:.1f} s")
    assert api.get(path) == {"id": unique, "revision": 1, "color": "green"}


def test_header_values_from_a_secret_reach_the_server_and_appear_nowhere_else(
    stack: dict[str, str], engine: Engine, unique: str, api: FakeApi, forgotten: None
) -> None:
    path = f"/items/{unique}"
    first, second = f"tok-{uuid.uuid4().hex}", f"tok-{uuid.uuid4().hex}"
    secret = f"{unique}-headers"
    sql(engine, "INSERT INTO secrets (name, value) VALUES (:n, :v)", n=secret, v=json.dumps({"Authorization": first}))
    # An API that echoes the token it refuses: the message in status must not.
    api.script("PUT", path, (403, {}, json.dumps({"error": f"token {first} may not write here"})))
    _insert(engine, unique, {"color": "red"}, url=api.url(path), headers=secret)
    wait_for(lambda: "answered 403" in _said(engine, unique), 20, "refused")
    assert "token *** may not write here" in _said(engine, unique)

    rotated = time.monotonic()  # a permanent failure is tried again once the secret changes
    sql(engine, "UPDATE secrets SET value = :v WHERE name = :n", n=secret, v=json.dumps({"Authorization": second}))
    wait_for(lambda: ready_at(engine, unique, 1, KIND), 20, "applied with the rotated token")
    print(f"secret rotated -> object ready: {(time.monotonic() - rotated) * 1000:.0f} ms")
    assert [s.headers.get("Authorization") for s in api.seen(path, "PUT")] == [first, second]

    with engine.connect() as conn:
        written = conn.execute(
            text(
                "SELECT coalesce((SELECT string_agg(to_jsonb(s)::text, '') FROM statuses AS s WHERE s.name = :n), '')"
                " || coalesce((SELECT string_agg(to_jsonb(r)::text, '') FROM runs AS r WHERE r.name = :n), '')"
            ),
            {"n": unique},
        ).scalar()
    assert "may not write here" in written
    for token in (first, second):
        assert token not in written
        assert token not in stack_log(stack)


def test_a_url_that_is_not_http_is_refused_naming_the_field(
    stack: dict[str, str], engine: Engine, unique: str, forgotten: None
) -> None:
    with pytest.raises(IntegrityError, match="ck_http_objects_url_http"):
        _insert(engine, unique, {}, url="ftp://example.com/x")
    with pytest.raises(IntegrityError, match="ck_http_objects_url_present"):
        _insert(engine, unique, {})
    _insert(engine, unique, {}, url="http://")  # a scheme without a host: the controller says so
    wait_for(lambda: (status(engine, unique, KIND) or {}).get("phase") == "Invalid", 20, "invalid")
    assert _said(engine, unique).startswith("url: must be an http:// or https:// URL with a host")


def test_429_backs_off_every_policy_whose_scope_holds_the_resource_and_nothing_else(
    stack: dict[str, str], engine: Engine, unique: str, api: FakeApi, forgotten: None
) -> None:
    """A rate limit is the API's, not one object's: its siblings in a policy's scope wait too (issue 16)."""
    labels = json.dumps({"api": unique})
    sql(
        engine,
        "INSERT INTO policies (name, kinds, selector, max_per_minute, burst) "
        "VALUES (:n, '{HTTPObject}', CAST(:s AS jsonb), 6000, 100), "
        # neither a policy over the whole fleet nor one without a rate backs off: they are not one API's limit
        "       (:n || '-fleet', NULL, NULL, 60000, 1000)",
        n=unique,
        s=labels,
    )
    sql(
        engine,
        "INSERT INTO policies (name, kinds, selector, max_in_flight) VALUES (:n || '-cap', '{HTTPObject}', "
        "CAST(:s AS jsonb), 100)",
        n=unique,
        s=labels,
    )
    try:
        first, sibling, outsider = f"{unique}-a", f"{unique}-b", f"{unique}-c"
        api.script("GET", f"/items/{first}", *[(429, {"Retry-After": "30"}, "slow down")] * 3)
        _insert(engine, first, {"n": 1}, url=api.url(f"/items/{first}"), labels=labels)

        def backing_off_s() -> float:
            with engine.connect() as conn:
                query = "SELECT extract(epoch FROM backoff_until - now()) FROM policy_statuses WHERE name = :n"
                left = conn.execute(text(query), {"n": unique}).scalar()
            return float(left or 0)

        wait_for(lambda: backing_off_s() > 20, 15, "the policy backing off after the 429")
        assert backing_off_s() <= 30
        with engine.connect() as conn:
            others = conn.execute(
                text("SELECT count(*) FROM policy_statuses WHERE name LIKE :n || '-%' AND backoff_until IS NOT NULL"),
                {"n": unique},
            ).scalar()
        assert others == 0
        _insert(engine, sibling, {"n": 2}, url=api.url(f"/items/{sibling}"), labels=labels)
        _insert(engine, outsider, {"n": 3}, url=api.url(f"/items/{outsider}"))
        wait_for(lambda: ready_at(engine, outsider, 1, KIND), 20, "the resource outside the scope reconciled")
        assert api.seen(f"/items/{sibling}") == [] and runs(engine, sibling, KIND) == []
        sql(engine, "UPDATE policy_statuses SET backoff_until = NULL WHERE name = :n", n=unique)  # the admin's lever
        wait_for(lambda: ready_at(engine, sibling, 1, KIND), 20, "the sibling reconciled once the scope is free")
    finally:
        sql(engine, "DELETE FROM policies WHERE name = :n OR name LIKE :n || '-%'", n=unique)
