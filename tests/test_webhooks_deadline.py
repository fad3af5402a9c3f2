"""A receiver cannot hold the dispatcher: each POST ends within webhook_timeout_seconds however slowly the receiver
answers, stop() ends at once, and a URL the HTTP client refuses is a failed attempt, not a jammed webhook.
(A dispatcher in this process, on a database of the test's own, against raw-socket receivers.)"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from models.database import make_engine
from scheduler.webhooks import Dispatcher
from setpoint.settings import Settings
from tests.conftest import wait_for
from tests.helpers import sql

TIMEOUT_S = 1.0


def trickler(head: bytes) -> tuple[str, threading.Event]:
    """A receiver that reads the request, then sends `head` and a byte every 0.3 s for a minute: every single
    read is quick, the answer never ends. Returns its URL and an event set when a request came."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    got = threading.Event()

    def serve() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.recv(65536)
            got.set()
            for byte in [head, *[b"x"] * 200]:
                try:
                    conn.sendall(byte)
                except OSError:
                    return
                time.sleep(0.3)

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}/hook", got


@pytest.fixture
def engine(fresh: dict[str, str]) -> Iterator[Engine]:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    sql(engine, "INSERT INTO secrets (name, value) VALUES ('hook', 'k')")
    yield engine
    engine.dispose()


@pytest.fixture
def dispatcher(fresh: dict[str, str]) -> Iterator[Dispatcher]:
    settings = Settings(
        database_url=fresh["SETPOINT_DATABASE_URL"],
        scheduler_metrics_port=None,
        webhook_timeout_seconds=TIMEOUT_S,
        webhook_retry_seconds=0.001,  # the first failure is the last: given up at once
    )
    dispatcher = Dispatcher(settings)
    yield dispatcher
    dispatcher.stop()


def add(engine: Engine, url: str) -> None:
    sql(engine, "INSERT INTO webhooks (name, url, secret) VALUES ('w', :u, 'hook')", u=url)
    sql(
        engine,
        "INSERT INTO event_inbox (kind, name, generation, type, reason) VALUES ('File', 'a', 1, 'Ready', 'Applied')",
    )
    sql(engine, "SELECT setpoint_publish_events()")


def delivery(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM deliveries WHERE webhook = 'w'")).mappings().first()
    return dict(row or {})


def timed_step(dispatcher: Dispatcher) -> float:
    started = time.monotonic()
    done = threading.Thread(target=dispatcher.courier.step, args=("w",), daemon=True)
    done.start()
    done.join(TIMEOUT_S + 3)
    assert not done.is_alive(), "the step is still held by the receiver"
    return time.monotonic() - started


def test_a_2xx_whose_body_trickles_is_delivered_within_the_timeout(engine: Engine, dispatcher: Dispatcher) -> None:
    url, _ = trickler(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    add(engine, url)
    assert timed_step(dispatcher) < TIMEOUT_S + 1
    row = delivery(engine)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 200), "the status is the answer"


def test_an_answer_whose_status_line_trickles_fails_within_the_timeout(engine: Engine, dispatcher: Dispatcher) -> None:
    url, _ = trickler(b"HTTP/1.1 2")
    add(engine, url)
    assert timed_step(dispatcher) < TIMEOUT_S + 1
    row = delivery(engine)
    assert (row["state"], row["last_status"]) == ("failed", None)
    assert row["last_error"].startswith(f"no answer within {TIMEOUT_S:g}s")


def test_stop_cuts_a_post_in_flight_short(engine: Engine, dispatcher: Dispatcher) -> None:
    url, got = trickler(b"HTTP/1.1 2")
    add(engine, url)
    dispatcher.settings = dispatcher.courier.settings = dispatcher.settings.model_copy(
        update={"webhook_timeout_seconds": 60.0}
    )
    dispatcher.start()
    assert got.wait(10), "no POST"
    started = time.monotonic()
    dispatcher.stop()
    assert time.monotonic() - started < 1.5
    assert delivery(engine)["state"] == "pending", "sent again by the next leader"


def test_a_url_the_http_client_refuses_is_a_failed_attempt_without_the_url(
    engine: Engine, dispatcher: Dispatcher
) -> None:
    """The table's CHECK lets a control character through; the HTTP client refuses it. Recorded, not raised."""
    bad = "http://a\x01b/services/T0/B0/token-part"
    add(engine, bad)
    assert dispatcher.courier.step("w") is None
    row = delivery(engine)
    assert (row["state"], row["attempts"], row["last_status"]) == ("failed", 1, None)
    assert row["last_error"].startswith("InvalidURL: ")
    assert "token-part" not in row["last_error"] and len(row["last_error"]) <= 500


def test_the_dispatcher_running_gives_up_a_refused_url_and_goes_on(engine: Engine, dispatcher: Dispatcher) -> None:
    add(engine, "http://a\x01b/")
    dispatcher.start()
    wait_for(lambda: delivery(engine).get("state") == "failed", 10, "given up")
    with engine.connect() as conn:
        cursor = conn.execute(text("SELECT last_event_id FROM webhooks WHERE name = 'w'")).scalar_one()
    assert cursor == delivery(engine)["event_id"], "the webhook moved past it"
