"""Webhooks: each matching event POSTed once, signed, in order, through a real scheduler process to a real local
HTTP receiver, across failures, a dead receiver, a slow one, a pause and a SIGKILLed scheduler.

Until the statuses triggers that emit events are merged (issue 15, "Events"), most tests make events the way
those triggers will: a row in `event_inbox`, whose NOTIFY wakes the dispatcher. Each test's events have a kind
of its own, and each webhook filters on it, so the tests (and, once merged, real events) never cross.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from sqlalchemy import Engine, text
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from models.database import libpq_url, make_engine
from scheduler import retention
from scheduler.leader import LOCK_ID
from scheduler.webhooks import Dispatcher
from setpoint.settings import Settings
from tests.conftest import (
    ROOT,
    Process,
    scratch_database,
    stack_env,
    start_scheduler,
    start_worker,
    stop_replicas,
    wait_for,
)
from tests.helpers import sql
from tests.test_metrics import Samples, metrics_port, sample, scrape, scrape_when

SECRET = f"hook-secret-{uuid.uuid4().hex}"
"""A value no test writes anywhere but `secrets`: found anywhere else, it leaked."""


@dataclass
class Received:
    event_id: int
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Receiver:
    """A real HTTP server in a thread: records every POST as it arrives, then answers as told."""

    failures: int = 0
    """Answer `failure_status` to this many requests first."""
    failure_status: int = 503
    failure_headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hold: threading.Event = field(default_factory=threading.Event)
    """While set, requests wait (up to 60 s) for `release` before being answered."""
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    port: int = 0

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(
                    Received(int(self.headers["X-Setpoint-Event-Id"]), dict(self.headers.items()), body)
                )
                if receiver.hold.is_set():
                    receiver.release.wait(60)
                time.sleep(receiver.delay_s)
                status, headers = 200, {}
                if receiver.failures > 0:
                    receiver.failures -= 1
                    status, headers = receiver.failure_status, receiver.failure_headers
                with contextlib.suppress(OSError):  # the sender may be gone (killed)
                    self.send_response(status)
                    for header, value in headers.items():
                        self.send_header(header, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        """Stop listening: connections are refused until `start()` again on the same port."""
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> list[int]:
        return [r.event_id for r in self.requests]


@dataclass
class Stack:
    engine: Engine
    env: dict[str, str]
    """The scheduler's environment."""
    folder: Path
    scheduler: Process
    worker: Process

    def restart_scheduler(self) -> None:
        self.scheduler = start_scheduler(self.env, self.folder / f"scheduler-{time.monotonic_ns()}.log")

    def scheduler_logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.folder.glob("scheduler*.log"))


@contextlib.contextmanager
def scheduler_login(url: str) -> Iterator[str]:
    """The URL of a fresh LOGIN user granted setpoint_scheduler alone, as a deployment runs the scheduler."""
    user, password = f"setpoint_scheduler_hooks_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE setpoint_scheduler").format(
                pgsql.Identifier(user), pgsql.Literal(password)
            )
        )
    try:
        yield make_url(url).set(username=user, password=password).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP ROLE IF EXISTS {}").format(pgsql.Identifier(user)))


@pytest.fixture(scope="module")
def hooks(servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A database, a scheduler and a worker of this module's own, with short backoff and retry times. The
    scheduler logs in with the scheduler's role alone, so the dispatcher is shown to need no more."""
    admin, broker = servers
    folder = tmp_path_factory.mktemp("webhooks")
    with scratch_database(admin, "webhooks") as url, scheduler_login(url) as scheduler_url:
        env = stack_env(
            url,
            broker,
            folder / "state",
            SETPOINT_LOG_LEVEL="DEBUG",
            SETPOINT_WEBHOOK_BACKOFF_BASE_SECONDS="0.2",
            SETPOINT_WEBHOOK_BACKOFF_MAX_SECONDS="1",
            SETPOINT_WEBHOOK_RETRY_SECONDS="8",
            SETPOINT_WEBHOOK_TIMEOUT_SECONDS="5",
            SETPOINT_WEBHOOK_CONCURRENCY="4",
        )
        engine = make_engine(url)
        sql(engine, "INSERT INTO secrets (name, value) VALUES ('hook-secret', :v)", v=SECRET)
        stack = Stack(
            engine,
            {**env, "SETPOINT_DATABASE_URL": scheduler_url},
            folder,
            start_scheduler({**env, "SETPOINT_DATABASE_URL": scheduler_url}, folder / "scheduler.log"),
            start_worker(env, folder / "worker.log"),
        )
        try:
            wait_for(lambda: "ready." in stack.worker.output() or stack.worker.popen.poll() is not None, 60, "worker")
            assert stack.worker.popen.poll() is None, stack.worker.output()
            yield stack
        finally:
            stack.scheduler.stop()
            stack.worker.stop()
            engine.dispose()
            stop_replicas(folder / "state")
            if "Traceback" in stack.scheduler_logs():
                print(stack.scheduler_logs()[-5000:])


@pytest.fixture
def kind() -> str:
    """An event kind of this test's own."""
    return f"Hook{uuid.uuid4().hex[:8]}"


@pytest.fixture
def webhooks(hooks: Stack) -> Iterator[list[str]]:
    """Names of the webhooks a test adds (with add_webhook); they go afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        sql(hooks.engine, "DELETE FROM webhooks WHERE name = :n", n=name)


def known_kind(engine: Engine, kind: str) -> None:
    """Make a test's own kind known, as a user's kind is (a table tracked under that name), so a webhook can
    filter on it: the table stays empty, its events are written to the inbox by `emit`."""
    if not kind.startswith("Hook"):
        return
    table = f"hook_kind_{kind[4:].lower()}"
    with engine.begin() as conn:
        if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
            conn.execute(text(f"CREATE TABLE {table} (name text)"))
            conn.execute(
                text(
                    f"CREATE TRIGGER setpoint_track AFTER INSERT ON {table} "
                    f"FOR EACH ROW EXECUTE FUNCTION setpoint_track('{kind}')"
                )
            )


def add_webhook(
    stack: Stack,
    made: list[str],
    receiver: Receiver,
    kinds: list[str] | None,
    types: list[str] | None = None,
    secret: str = "hook-secret",
    paused: bool = False,
    format: str = "generic",  # noqa: A002  # the column's name
) -> str:
    name = f"hook-{uuid.uuid4().hex[:8]}"
    for kind in kinds or ():
        known_kind(stack.engine, kind)
    sql(
        stack.engine,
        "INSERT INTO webhooks (name, url, secret, kinds, types, paused, format) VALUES (:n, :u, :s, :k, :t, :p, :f)",
        n=name,
        u=receiver.url,
        s=secret,
        k=kinds,
        t=types,
        p=paused,
        f=format,
    )
    made.append(name)
    return name


def emit(engine: Engine, kind: str, name: str, type_: str = "Ready", message: str | None = None) -> None:
    """An event as the statuses triggers record one (they are merged separately): a row in the inbox."""
    sql(
        engine,
        "INSERT INTO event_inbox (kind, name, generation, type, reason, message, details) "
        "VALUES (:k, :n, 1, :t, 'Test', :m, CAST(:d AS jsonb))",
        k=kind,
        n=name,
        t=type_,
        m=message,
        d=json.dumps({"field": "content"}),
    )


def event_ids(engine: Engine, kind: str) -> list[int]:
    with engine.connect() as conn:
        query = text("SELECT id FROM events WHERE kind = :k ORDER BY id")
        return list(conn.execute(query, {"k": kind}).scalars())


def deliveries(engine: Engine, webhook: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        query = text("SELECT * FROM deliveries WHERE webhook = :w ORDER BY event_id")
        return [dict(row) for row in conn.execute(query, {"w": webhook}).mappings()]


def readme_verify() -> Any:
    """The README's receiver example's `verify`, run as written."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    example: dict[str, Any] = {"__name__": "readme_receiver"}
    exec(next(b for b in blocks if "X-Setpoint-Signature" in b), example)
    return example["verify"]


def signed(received: Received) -> bool:
    """Signed as documented: the HMAC-SHA256 of timestamp + "." + body, with a timestamp of the moment."""
    stamp = received.headers["X-Setpoint-Timestamp"]
    expected = "sha256=" + hmac.new(SECRET.encode(), f"{stamp}.".encode() + received.body, hashlib.sha256).hexdigest()
    recent = abs(time.time() - int(stamp)) < 60
    return recent and hmac.compare_digest(received.headers["X-Setpoint-Signature"], expected)


def test_each_matching_event_is_delivered_once_signed_with_the_documented_body(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    receiver = Receiver().start()
    hook = add_webhook(hooks, webhooks, receiver, [kind])
    for i in range(3):
        emit(hooks.engine, kind, f"res-{i}", message=f"step <{i}> & more")
    wait_for(lambda: len(receiver.requests) >= 3 and deliveries(hooks.engine, hook), 10, "three deliveries")
    wait_for(lambda: all(d["state"] == "delivered" for d in deliveries(hooks.engine, hook)), 10, "recorded")
    ids = event_ids(hooks.engine, kind)
    assert receiver.ids() == ids, "each once, in event order"
    verify = readme_verify()
    for received, i in zip(receiver.requests, range(3), strict=True):
        assert signed(received)
        stamp, signature = received.headers["X-Setpoint-Timestamp"], received.headers["X-Setpoint-Signature"]
        assert verify(received.body, stamp, signature, SECRET.encode())
        assert not verify(received.body + b" ", stamp, signature, SECRET.encode())
        assert not verify(received.body, str(int(stamp) + 1), signature, SECRET.encode()), "the time is signed"
        assert received.headers["Content-Type"] == "application/json"
        assert received.headers["X-Setpoint-Webhook"] == hook
        body = received.event
        assert body["id"] == received.event_id
        assert (body["kind"], body["name"], body["type"], body["reason"]) == (kind, f"res-{i}", "Ready", "Test")
        assert body["message"] == f"step <{i}> & more" and body["details"] == {"field": "content"}
        assert body["generation"] == 1 and body["at"].endswith("+00:00")
        assert body["text"] == f"{kind}/res-{i} Ready (Test): step &lt;{i}&gt; &amp; more"  # Slack's escaping
    rows = deliveries(hooks.engine, hook)
    assert [(d["event_id"], d["attempts"], d["last_status"]) for d in rows] == [(i, 1, 200) for i in ids]
    with hooks.engine.connect() as conn:
        cursor = conn.execute(text("SELECT last_event_id FROM webhooks WHERE name = :n"), {"n": hook}).scalar()
    assert cursor is not None and cursor >= ids[-1]


def test_a_new_webhook_starts_after_the_newest_event(hooks: Stack, webhooks: list[str], kind: str) -> None:
    emit(hooks.engine, kind, "before")  # in the inbox, not yet published: nobody delivers yet
    receiver = Receiver().start()
    add_webhook(hooks, webhooks, receiver, [kind])
    emit(hooks.engine, kind, "after")
    wait_for(lambda: receiver.requests, 2, "a delivery, woken by the event (the periodic look is every 5 s)")
    time.sleep(0.3)  # give a wrong extra delivery the time to show
    assert [r.event["name"] for r in receiver.requests] == ["after"]


def test_filters_by_kinds_and_types(hooks: Stack, webhooks: list[str]) -> None:
    one, two = f"Hook{uuid.uuid4().hex[:8]}", f"Hook{uuid.uuid4().hex[:8]}"
    by_kind, by_type, by_both = Receiver().start(), Receiver().start(), Receiver().start()
    add_webhook(hooks, webhooks, by_kind, [one])
    add_webhook(hooks, webhooks, by_type, [one, two], ["Failed"])
    add_webhook(hooks, webhooks, by_both, [two], ["Failed", "Recovered"])
    emit(hooks.engine, one, "a", "Ready")
    emit(hooks.engine, two, "b", "Failed")
    emit(hooks.engine, one, "c", "Failed")
    emit(hooks.engine, two, "d", "Ready")
    emit(hooks.engine, two, "e", "Recovered")  # the last: once every receiver that wants it has it, all is sent
    wait_for(lambda: len(by_both.requests) == 2, 10, "two for kind and types")
    wait_for(lambda: len(by_kind.requests) == 2 and len(by_type.requests) == 2, 10, "the others")
    time.sleep(0.3)
    assert [r.event["name"] for r in by_kind.requests] == ["a", "c"]
    assert [r.event["name"] for r in by_type.requests] == ["b", "c"]
    assert [r.event["name"] for r in by_both.requests] == ["b", "e"]


def test_a_receiver_failing_three_times_then_succeeding_gets_it_once(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    receiver = Receiver(failures=3).start()
    hook = add_webhook(hooks, webhooks, receiver, [kind])
    emit(hooks.engine, kind, "flaky")
    wait_for(lambda: [d["state"] for d in deliveries(hooks.engine, hook)] == ["delivered"], 20, "delivered")
    [row] = deliveries(hooks.engine, hook)
    assert row["attempts"] == 4 and row["last_status"] == 200 and row["last_error"] is None
    assert len(receiver.requests) == 4, "three refused, one accepted"
    assert len({r.event_id for r in receiver.requests}) == 1 and len({r.body for r in receiver.requests}) == 1
    assert signed(receiver.requests[-1])
    # Backed off: 0.2 s doubling, each delay jittered down by up to half, so at least 0.1 + 0.2 + 0.4.
    assert row["last_attempt_at"] - row["first_attempt_at"] >= timedelta(seconds=0.7)


def test_a_receiver_down_for_a_while_gets_everything_afterwards_in_order(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    receiver = Receiver().start()
    hook = add_webhook(hooks, webhooks, receiver, [kind])
    receiver.down()
    for i in range(5):
        emit(hooks.engine, kind, f"res-{i % 2}", message=str(i))
    wait_for(lambda: any(d["attempts"] >= 2 for d in deliveries(hooks.engine, hook)), 10, "failed attempts")
    [waiting] = deliveries(hooks.engine, hook)
    assert waiting["state"] == "pending" and waiting["last_status"] is None
    assert "Connect" in waiting["last_error"] and receiver.url not in waiting["last_error"]
    receiver.start()
    wait_for(lambda: len(receiver.requests) >= 5, 10, "everything")
    wait_for(lambda: all(d["state"] == "delivered" for d in deliveries(hooks.engine, hook)), 10, "all delivered")
    assert receiver.ids() == event_ids(hooks.engine, kind)
    assert [r.event["message"] for r in receiver.requests] == ["0", "1", "2", "3", "4"]


def test_a_slow_receiver_does_not_delay_another_webhook(hooks: Stack, webhooks: list[str], kind: str) -> None:
    slow, fast = Receiver(), Receiver().start()
    slow.hold.set()
    slow.start()
    add_webhook(hooks, webhooks, slow, [kind])
    add_webhook(hooks, webhooks, fast, [kind])
    try:
        emit(hooks.engine, kind, "first")
        wait_for(lambda: slow.requests, 10, "the slow receiver holding the first")
        emit(hooks.engine, kind, "second")
        emit(hooks.engine, kind, "third")
        started = time.monotonic()
        wait_for(lambda: len(fast.requests) == 3, 5, "the fast receiver's three")
        assert time.monotonic() - started < 2.0
        assert len(slow.requests) == 1, "the slow one still holds its first, its others wait in order"
    finally:
        slow.release.set()
    wait_for(lambda: len(slow.requests) == 3, 10, "the slow one's rest")
    assert slow.ids() == fast.ids() == event_ids(hooks.engine, kind)


def test_a_paused_webhook_keeps_its_place_and_gets_everything_when_unpaused(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    paused, witness = Receiver().start(), Receiver().start()
    hook = add_webhook(hooks, webhooks, paused, [kind], paused=True)
    add_webhook(hooks, webhooks, witness, [kind])
    for i in range(3):
        emit(hooks.engine, kind, f"res-{i}")
    wait_for(lambda: len(witness.requests) == 3, 10, "the witness's three")
    time.sleep(0.5)
    assert paused.requests == []
    sql(hooks.engine, "UPDATE webhooks SET paused = false WHERE name = :n", n=hook)
    wait_for(lambda: len(paused.requests) == 3, 5, "three once unpaused")
    assert paused.ids() == witness.ids()


def test_a_missing_secret_holds_deliveries_with_a_clear_error_until_it_exists(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    missing = f"absent-{uuid.uuid4().hex[:6]}"
    receiver = Receiver().start()
    hook = add_webhook(hooks, webhooks, receiver, [kind], secret=missing)
    emit(hooks.engine, kind, "waiting")
    wait_for(lambda: deliveries(hooks.engine, hook), 10, "a delivery row")
    [row] = deliveries(hooks.engine, hook)
    assert row["state"] == "pending" and row["attempts"] == 0 and receiver.requests == []
    assert f"secret '{missing}' does not exist" in row["last_error"]
    sql(hooks.engine, "INSERT INTO secrets (name, value) VALUES (:n, :v)", n=missing, v=SECRET)
    wait_for(lambda: receiver.requests, 5, "delivered once the secret exists")  # within the 1 s backoff cap
    assert signed(receiver.requests[0])
    wait_for(lambda: deliveries(hooks.engine, hook)[0]["state"] == "delivered", 5, "recorded")
    sql(hooks.engine, "DELETE FROM secrets WHERE name = :n", n=missing)


def test_a_receiver_failing_past_the_retry_time_is_given_up_and_the_next_event_goes(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    receiver = Receiver(failures=1_000).start()
    hook = add_webhook(hooks, webhooks, receiver, [kind])
    emit(hooks.engine, kind, "doomed")
    emit(hooks.engine, kind, "next")
    wait_for(lambda: deliveries(hooks.engine, hook) and deliveries(hooks.engine, hook)[0]["state"] == "failed", 20)
    receiver.failures = 0
    wait_for(lambda: [d["state"] for d in deliveries(hooks.engine, hook)] == ["failed", "delivered"], 10, "next")
    failed = deliveries(hooks.engine, hook)[0]
    assert failed["last_status"] == 503 and failed["last_error"] == "HTTP 503 Service Unavailable"
    assert 3 <= failed["attempts"] <= 30
    assert failed["last_attempt_at"] - failed["first_attempt_at"] >= timedelta(seconds=8)
    assert {r.event["name"] for r in receiver.requests} == {"doomed", "next"}


def test_no_secret_value_in_a_body_a_delivery_or_the_log(hooks: Stack, webhooks: list[str], kind: str) -> None:
    receiver = Receiver(failures=1).start()
    hook = add_webhook(hooks, webhooks, receiver, [kind])
    emit(hooks.engine, kind, "leak", message="no secret here")
    wait_for(lambda: [d["state"] for d in deliveries(hooks.engine, hook)] == ["delivered"], 10, "delivered")
    assert all(SECRET.encode() not in r.body for r in receiver.requests)
    assert all(SECRET not in value for r in receiver.requests for value in r.headers.values())
    with hooks.engine.connect() as conn:
        everything = conn.execute(text("SELECT to_jsonb(d)::text FROM deliveries AS d")).scalars().all()
        events = conn.execute(text("SELECT to_jsonb(e)::text FROM events AS e")).scalars().all()
    assert not [row for row in [*everything, *events] if SECRET in row]
    logs = hooks.scheduler_logs()
    assert "webhook delivery attempt failed" in logs, "the failed attempt was logged"
    assert SECRET not in logs and receiver.url not in logs


def test_a_scheduler_killed_mid_delivery_neither_loses_nor_resends_an_acknowledged_event(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    receiver = Receiver().start()
    hook = add_webhook(hooks, webhooks, receiver, [kind])
    emit(hooks.engine, kind, "acked-1")
    emit(hooks.engine, kind, "acked-2")
    wait_for(lambda: [d["state"] for d in deliveries(hooks.engine, hook)] == ["delivered"] * 2, 10, "two acked")
    receiver.hold.set()
    emit(hooks.engine, kind, "in-flight")
    wait_for(lambda: len(receiver.requests) == 3, 10, "the third held by the receiver")
    hooks.scheduler.kill()
    receiver.release.set()  # the answer goes nowhere: nobody recorded it
    receiver.hold.clear()
    emit(hooks.engine, kind, "while-down")  # the inbox keeps it; no scheduler publishes it yet
    hooks.restart_scheduler()
    emit(hooks.engine, kind, "after")
    wait_for(lambda: len(deliveries(hooks.engine, hook)) == 5, 30, "five deliveries")
    wait_for(lambda: all(d["state"] == "delivered" for d in deliveries(hooks.engine, hook)), 10, "all delivered")
    ids = event_ids(hooks.engine, kind)
    names = [r.event["name"] for r in receiver.requests]
    assert names == ["acked-1", "acked-2", "in-flight", "in-flight", "while-down", "after"], (
        "the unacknowledged one again, then the rest in order"
    )
    assert receiver.ids() == [ids[0], ids[1], ids[2], ids[2], ids[3], ids[4]]
    assert [d["attempts"] for d in deliveries(hooks.engine, hook)] == [1, 1, 2, 1, 1]


def test_a_standby_scheduler_sends_nothing(hooks: Stack, webhooks: list[str], kind: str) -> None:
    """Two schedulers, one dispatcher: a second scheduler waits for leadership and sends nothing meanwhile."""
    standby = start_scheduler(hooks.env, hooks.folder / "scheduler-standby.log")
    try:
        wait_for(lambda: "waiting to lead" in standby.output(), 20, "the standby waiting")
        receiver = Receiver().start()
        add_webhook(hooks, webhooks, receiver, [kind])
        for i in range(10):
            emit(hooks.engine, kind, f"res-{i}")
        wait_for(lambda: len(receiver.requests) == 10, 10, "ten")
        time.sleep(0.3)
        assert len(receiver.requests) == 10 and len(set(receiver.ids())) == 10
    finally:
        standby.stop()


def test_a_tampered_file_produces_exactly_one_drift_corrected_event_and_one_signed_delivery(
    hooks: Stack, webhooks: list[str], tmp_path: Path
) -> None:
    """End to end: the worker heals the file, the statuses triggers record DriftCorrected, the dispatcher
    POSTs it. Needs the events emission of issue 15 (statuses triggers), merged separately."""
    from tests.test_watch import Stack as Watched
    from tests.test_watch import managed_file

    receiver = Receiver().start()
    hook = add_webhook(hooks, webhooks, receiver, ["File"], ["DriftCorrected"])
    target = tmp_path / "motd"
    name = managed_file(Watched(hooks.engine, hooks.worker, hooks.folder / "state"), target)
    target.write_text("tampered\n")
    wait_for(lambda: target.read_text() == "desired\n", 10, "the file healed")
    wait_for(lambda: [r for r in receiver.requests if r.event["name"] == name], 10, "the drift delivered")
    # One more reconcile, which finds nothing to correct: it must not say so again.
    with hooks.engine.begin() as conn:
        runs_before = conn.execute(text("SELECT count(*) FROM runs WHERE name = :n"), {"n": name}).scalar_one()
        conn.execute(
            text("UPDATE statuses SET next_reconcile_at = now() WHERE kind = 'File' AND name = :n"), {"n": name}
        )

    def ran_again() -> bool:
        with hooks.engine.connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM runs WHERE name = :n"), {"n": name}).scalar_one()
        return bool(count > runs_before)

    wait_for(ran_again, 10, "another reconcile")
    time.sleep(0.5)
    with hooks.engine.connect() as conn:
        drifts = conn.execute(
            text("SELECT count(*) FROM events WHERE kind = 'File' AND name = :n AND type = 'DriftCorrected'"),
            {"n": name},
        ).scalar_one()
    assert drifts == 1
    mine = [r for r in receiver.requests if r.event["name"] == name]
    assert len(mine) == 1 and signed(mine[0]) and mine[0].event["type"] == "DriftCorrected"
    body = mine[0].event  # as the README shows it
    assert (body["reason"], body["message"]) == ("Applied", f"drift corrected: write 8 bytes to {target}")
    assert body["details"] == {"drift": [{"change": f"write 8 bytes to {target}"}]}
    assert body["text"] == f"File/{name} DriftCorrected (Applied): drift corrected: write 8 bytes to {target}"
    assert [(d["state"], d["attempts"]) for d in deliveries(hooks.engine, hook)] == [("delivered", 1)]


def test_the_schedulers_role_reads_no_secret_and_changes_no_webhook_but_its_cursor(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    receiver = Receiver().start()
    hook = add_webhook(hooks, webhooks, receiver, [kind])
    scheduler = make_engine(hooks.env["SETPOINT_DATABASE_URL"])
    try:
        for statement in (
            "SELECT value FROM secrets",
            "UPDATE webhooks SET url = 'http://127.0.0.1:1/stolen' WHERE name = :n",
            "UPDATE webhooks SET paused = true WHERE name = :n",
            "INSERT INTO webhooks (name, url, secret) VALUES ('forged', 'http://127.0.0.1:1/x', 'hook-secret')",
            "INSERT INTO event_inbox (kind, name, type) VALUES ('File', 'forged', 'Ready')",
        ):
            with pytest.raises(ProgrammingError) as refused:
                sql(scheduler, statement, n=hook)
            assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege), statement
        with scheduler.connect() as conn:  # a secret no webhook names is out of its reach
            assert conn.execute(text("SELECT setpoint_webhook_secret('no-such-hook')")).scalar() is None
    finally:
        scheduler.dispose()


def test_the_scheduler_counts_deliveries_by_result_and_shows_what_each_webhook_has_pending(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    port = metrics_port(hooks.scheduler)
    before = scrape(port)
    receiver = Receiver(failures=2).start()
    hook = add_webhook(hooks, webhooks, receiver, [kind])
    emit(hooks.engine, kind, "counted")

    def counted(samples: Samples) -> bool:
        def grew(result: str) -> float:
            name = "setpoint_webhook_deliveries_total"
            return (sample(samples, name, result=result) or 0) - (sample(before, name, result=result) or 0)

        pending = sample(samples, "setpoint_webhook_pending_events", webhook=hook)
        return grew("retried") == 2 and grew("delivered") == 1 and pending == 0

    scrape_when(port, counted, "two retried, one delivered, nothing pending")
    sql(hooks.engine, "UPDATE webhooks SET paused = true WHERE name = :n", n=hook)
    emit(hooks.engine, kind, "waits")
    scrape_when(
        port, lambda s: sample(s, "setpoint_webhook_pending_events", webhook=hook) == 1, "one pending while paused"
    )


def test_deliveries_done_with_go_with_run_history_and_pending_ones_stay(hooks: Stack, webhooks: list[str]) -> None:
    hook = add_webhook(hooks, webhooks, Receiver(port=9), [f"Hook{uuid.uuid4().hex[:8]}"], paused=True)
    old, new = "now() - interval '15 days'", "now() - interval '1 day'"
    for event_id, state, at in ((1, "delivered", old), (2, "failed", old), (3, "pending", old), (4, "delivered", new)):
        sql(
            hooks.engine,
            "INSERT INTO deliveries (webhook, event_id, state, attempts, last_attempt_at) "
            f"VALUES (:w, :e, :s, 1, {at})",
            w=hook,
            e=event_id,
            s=state,
        )
    retention.prune(hooks.engine, keep=20, days=14)
    assert [d["event_id"] for d in deliveries(hooks.engine, hook)] == [3, 4]


def test_a_stream_of_events_each_committed_alone_arrives_complete_and_in_order(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    receiver = Receiver().start()
    add_webhook(hooks, webhooks, receiver, [kind])
    with hooks.engine.connect() as conn:
        for i in range(300):
            conn.execute(
                text("INSERT INTO event_inbox (kind, name, type) VALUES (:k, :n, 'Ready')"), {"k": kind, "n": f"s-{i}"}
            )
            conn.commit()
            time.sleep(0.002 * (i % 3))
    wait_for(lambda: len(receiver.requests) >= 300, 30, "all 300")
    assert [r.event["name"] for r in receiver.requests] == [f"s-{i}" for i in range(300)]


def test_an_event_published_while_the_dispatcher_looks_for_one_is_not_skipped(fresh: dict[str, str]) -> None:
    """The cursor moves only to what the dispatcher looked at: an event published between its look and its
    cursor's move is delivered next, not skipped. (A dispatcher in this process, to publish at that moment.)"""
    url = fresh["SETPOINT_DATABASE_URL"]
    engine = make_engine(url)
    receiver = Receiver().start()
    sql(engine, "INSERT INTO secrets (name, value) VALUES ('hook-secret', :v)", v=SECRET)
    sql(engine, "INSERT INTO webhooks (name, url, secret) VALUES ('racy', :u, 'hook-secret')", u=receiver.url)
    dispatcher = Dispatcher(Settings(database_url=url, scheduler_metrics_port=None))
    published: list[str] = []

    def publish_meanwhile(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "FROM events" in statement and not published:
            published.append(statement)
            emit(engine, "File", "meanwhile")
            sql(engine, "SELECT setpoint_publish_events()")

    sqlalchemy_event.listen(dispatcher.engine, "after_cursor_execute", publish_meanwhile)
    try:
        assert dispatcher.courier.step("racy") == 0.0, "nothing to send at its look"
        assert published
        assert dispatcher.courier.step("racy") is None, "then the event published meanwhile"
        assert [r.event["name"] for r in receiver.requests] == ["meanwhile"]
    finally:
        dispatcher.stop()
        engine.dispose()


def test_the_readme_sql_adds_webhooks_as_written(hooks: Stack) -> None:
    block = next(
        b for b in re.findall(r"```sql\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S) if "webhooks" in b
    )
    with hooks.engine.connect() as conn:  # in one transaction, rolled back: the dispatcher never sees them
        for statement in filter(str.strip, re.sub(r"--[^\n]*", "", block).split(";")):
            conn.execute(text(statement))
        rows = conn.execute(text("SELECT name, kinds, types, paused FROM webhooks WHERE name IN ('ops', 'db-alerts')"))
        assert sorted(map(tuple, rows)) == [
            ("db-alerts", ["PostgresRole", "PostgresDatabase"], ["Failed", "DriftCorrected", "Recovered"], False),
            ("ops", None, None, True),
        ]
        conn.rollback()


def test_a_scheduler_that_loses_leadership_stops_sending_and_sends_again_once_it_leads(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    receiver = Receiver().start()
    add_webhook(hooks, webhooks, receiver, [kind])
    stopped = hooks.scheduler.output().count("webhook dispatcher stopped")
    with hooks.engine.connect() as conn:  # the leader's session ends, as when its connection breaks
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = :lock "
                "AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"lock": LOCK_ID},
        )
    wait_for(lambda: hooks.scheduler.output().count("webhook dispatcher stopped") > stopped, 10, "dispatcher stopped")
    emit(hooks.engine, kind, "after")
    wait_for(lambda: receiver.requests, 20, "delivered once it leads again")
    time.sleep(0.3)
    assert [r.event["name"] for r in receiver.requests] == ["after"]


def test_kinds_are_taken_as_the_cli_spells_them_and_stored_as_the_kinds_names(hooks: Stack) -> None:
    with hooks.engine.connect() as conn:  # in one transaction, rolled back: the dispatcher never sees it
        conn.execute(
            text("INSERT INTO webhooks (name, url, secret, kinds) VALUES ('spelled', 'http://h/', 's', :k)"),
            {"k": ["files", "file", "File", "postgres_roles", "postgresrole"]},
        )
        kinds = conn.execute(text("SELECT kinds FROM webhooks WHERE name = 'spelled'")).scalar()
        conn.rollback()
    assert kinds == ["File", "PostgresRole"]


@pytest.mark.parametrize(
    ("column", "value", "named"),
    [
        ("kinds", ["Files", "Fils"], "kinds: 'Fils' is not a kind; known kinds: "),
        ("types", ["Drift"], 'constraint "ck_webhooks_types_known"'),
        ("url", "http://h:8x/", 'constraint "ck_webhooks_url_format"'),
        ("url", "http://h:0/", 'constraint "ck_webhooks_url_format"'),
        ("url", "http://h:65536/", 'constraint "ck_webhooks_url_format"'),
        ("url", "http://[::1/", 'constraint "ck_webhooks_url_format"'),
        ("url", "http://[1:2]/", 'constraint "ck_webhooks_url_format"'),
        ("format", "slack", 'constraint "ck_webhooks_format_known"'),
    ],
)
def test_a_mistyped_filter_url_or_format_is_refused_naming_its_column(
    hooks: Stack, column: str, value: Any, named: str
) -> None:
    row = {"name": "mistyped", "url": "http://127.0.0.1:8080/x", "secret": "s", column: value}
    with pytest.raises(Exception) as refused:
        sql(hooks.engine, f"INSERT INTO webhooks ({', '.join(row)}) VALUES ({', '.join(':' + c for c in row)})", **row)
    assert isinstance(refused.value.orig, psycopg.errors.CheckViolation)  # type: ignore[attr-defined]
    assert named in str(refused.value)


def test_the_urls_the_check_lets_through_include_ports_and_ipv6(hooks: Stack) -> None:
    with hooks.engine.connect() as conn:
        for i, url in enumerate(["http://[::1]:8080/x", "https://[::ffff:10.0.0.1]/", "http://127.0.0.1:65535/"]):
            conn.execute(
                text("INSERT INTO webhooks (name, url, secret) VALUES (:n, :u, 's')"), {"n": f"fine-{i}", "u": url}
            )
        conn.rollback()


def test_a_client_error_is_given_up_at_once_and_the_next_event_goes(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    receiver = Receiver(failures=1, failure_status=404).start()
    hook = add_webhook(hooks, webhooks, receiver, [kind])
    emit(hooks.engine, kind, "gone")
    emit(hooks.engine, kind, "next")
    wait_for(lambda: [d["state"] for d in deliveries(hooks.engine, hook)] == ["failed", "delivered"], 5, "both")
    failed = deliveries(hooks.engine, hook)[0]
    assert (failed["attempts"], failed["last_status"], failed["last_error"]) == (1, 404, "HTTP 404 Not Found")
    assert [r.event["name"] for r in receiver.requests] == ["gone", "next"]


def test_a_receiver_asking_to_retry_after_some_seconds_is_left_alone_that_long(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    """The module's backoff is capped at 1 s: the 2 s between the attempts are the receiver's Retry-After."""
    receiver = Receiver(failures=1, failure_status=429, failure_headers={"Retry-After": "2"}).start()
    hook = add_webhook(hooks, webhooks, receiver, [kind])
    emit(hooks.engine, kind, "busy")
    wait_for(lambda: [d["state"] for d in deliveries(hooks.engine, hook)] == ["delivered"], 10, "delivered")
    [row] = deliveries(hooks.engine, hook)
    assert row["attempts"] == 2
    assert row["last_attempt_at"] - row["first_attempt_at"] >= timedelta(seconds=2)


def test_a_chat_webhook_gets_the_text_alone_as_slack_and_mattermost_accept_it(
    hooks: Stack, webhooks: list[str], kind: str
) -> None:
    receiver = Receiver().start()
    add_webhook(hooks, webhooks, receiver, [kind], format="chat")
    emit(hooks.engine, kind, "chatty", "Failed", message="it <broke>")
    wait_for(lambda: receiver.requests, 10, "delivered")
    [received] = receiver.requests
    assert received.event == {"text": f"{kind}/chatty Failed (Test): it &lt;broke&gt;"}
    assert signed(received)


def test_the_readme_receiver_refuses_a_request_replayed_later() -> None:
    verify = readme_verify()
    body, secret = b'{"id": 1}', b"k"

    def signature(stamp: int) -> str:
        return "sha256=" + hmac.new(secret, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()

    now = int(time.time())
    assert verify(body, str(now), signature(now), secret)
    assert not verify(body, str(now - 600), signature(now - 600), secret), "ten minutes old: a replay"
    assert not verify(body, "soon", signature(now), secret)
