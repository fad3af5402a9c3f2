"""Zero-setup mode starts real PostgreSQL and Redis servers, and a second start on the same folder keeps the data."""

from __future__ import annotations

import pathlib

import psycopg
import redis

from setpoint import embedded


def test_servers_answer_and_keep_their_data_across_restarts(tmp_path: pathlib.Path) -> None:
    with embedded.running(tmp_path) as services:
        assert services.database_url.startswith("postgresql://") and services.database_url.endswith("/setpoint")
        assert embedded.reachable_postgres(services.database_url)
        assert embedded.reachable_redis(services.broker_url)
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            conn.execute("CREATE TABLE kept (name text)")
            conn.execute("INSERT INTO kept VALUES ('survives a restart')")
        broker = redis.Redis.from_url(services.broker_url)
        assert broker.set("greeting", "hello")
        assert broker.get("greeting") == b"hello"
        broker.close()
        first = services

    assert not embedded.reachable_postgres(first.database_url, timeout_s=1)
    assert not embedded.reachable_redis(first.broker_url, timeout_s=1)

    with embedded.running(tmp_path) as services:
        with psycopg.connect(services.database_url) as conn:
            assert conn.execute("SELECT name FROM kept").fetchall() == [("survives a restart",)]
        broker = redis.Redis.from_url(services.broker_url)
        assert broker.get("greeting") == b"hello"
        broker.close()


def test_unreachable_urls_are_reported_as_such() -> None:
    assert not embedded.reachable_postgres("postgresql+psycopg://postgres@127.0.0.1:1/setpoint", timeout_s=1)
    assert not embedded.reachable_redis("redis://127.0.0.1:1/0", timeout_s=1)
    assert not embedded.reachable_redis("not-a-url")
