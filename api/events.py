"""`GET /v1/events`: what happened, as server-sent events pushed the moment it is published, or as a JSON page.

One listener per API process (a thread following the database through resources.events.Follower, so one LISTEN
connection however many clients) fans each new batch out to every stream's bounded queue. A stream starts after
its `Last-Event-ID` (or `?after=`), reading what it missed from the database page by page, then subscribes and
reads the gap once more: ids only grow in commit order, so it misses nothing and repeats nothing. A client that
falls `events_client_queue` events behind is disconnected rather than buffered without bound; it resumes with its
last id. Without an id a stream starts from now.
"""

# No `from __future__ import annotations`: FastAPI reads the query parameters from the endpoint's annotations.

import asyncio
import dataclasses
import json
import logging
import threading
import weakref
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from api import failures
from resources import events
from setpoint.errors import UnknownKind
from setpoint.settings import Settings

log = logging.getLogger("setpoint.api")

OPENED = b": listening\n\n"
"""The first bytes of every stream: it is open, and events from here on will come."""


DESCRIPTION = (
    "Events are transitions a person would want to know about, one per transition, never one per reconcile. "
    "A stream resumes after `Last-Event-ID` (or `after`), missing nothing; without one it starts from now. "
    "An id it cannot resume after (events after it pruned, or never given: a restored database) is 410 Gone: "
    "read the current state, then start again without one. "
    "Idle streams get a comment every SETPOINT_EVENTS_HEARTBEAT_SECONDS. Types: "
    + "; ".join(f"`{name}` {meaning}" for name, meaning in events.TYPES.items())
)


class Slot:
    """A stream's place among the hub's events_max_clients, given back once (when the stream ends, or when its
    body is dropped unstarted: a client gone before the first byte)."""

    def __init__(self, hub: "Hub") -> None:
        self._hub: Hub | None = hub

    def release(self) -> None:
        if self._hub is not None:
            self._hub._give_back()
            self._hub = None


@dataclasses.dataclass(eq=False)
class Subscriber:
    wanted: events.Filter
    queue: asyncio.Queue[dict[str, Any]]
    overflowed: bool = False


class Hub:
    """The process's one listener and its subscribers; started by the first stream, stopped with the app."""

    def __init__(self, database_url: str, engine: Engine, settings: Settings) -> None:
        self._follower = events.Follower(database_url, engine)
        self._engine = engine
        self._settings = settings
        self._subscribers: set[Subscriber] = set()
        self._streams = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def take_slot(self) -> Slot | None:
        """One of the events_max_clients stream slots, or None if all are taken. Taken on the event loop before the
        response is returned (check and count in one step, no await between), so a burst of connections cannot
        all pass the check before any of them counts."""
        if self._streams >= self._settings.events_max_clients:
            return None
        self._streams += 1
        return Slot(self)

    def _give_back(self) -> None:
        self._streams -= 1

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._listen, name="events-listener", daemon=True)
            self._thread.start()

    def _listen(self) -> None:
        after: int | None = None
        while not self._stop.is_set():
            try:
                after = events.head(self._engine) if after is None else after
                for batch in self._follower.batches(after, events.EVERYTHING, self._stop):
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._fan_out, batch)
                    after = batch[-1]["id"]
            except Exception:
                log.exception("events listener failed; it starts again in a second")
                self._stop.wait(1.0)

    def _fan_out(self, batch: list[dict[str, Any]]) -> None:
        for subscriber in self._subscribers:
            for event in batch:
                if subscriber.overflowed or not subscriber.wanted.matches(event):
                    continue
                try:
                    subscriber.queue.put_nowait(event)
                except asyncio.QueueFull:
                    subscriber.overflowed = True

    def subscribe(self, wanted: events.Filter) -> Subscriber:
        """Every event fanned out from now on that `wanted` matches goes to the subscriber's queue."""
        self._start()
        subscriber = Subscriber(wanted, asyncio.Queue(maxsize=self._settings.events_client_queue))
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _frame(event: dict[str, Any]) -> bytes:
    return format_sse_event(data_str=json.dumps(event), event=event["type"], id=str(event["id"]))


async def _stream(
    hub: Hub, slot: Slot, engine: Engine, after: int | None, wanted: events.Filter, heartbeat_s: float
) -> Any:
    try:
        cursor = after if after is not None else await run_in_threadpool(events.head, engine)
        yield OPENED
        # What it missed, page by page from the database (nothing buffered), then subscribe and read the gap:
        # anything published after subscribing is fanned out to the queue, anything before is in the database.
        subscriber: Subscriber | None = None
        try:
            while True:
                newest = await run_in_threadpool(events.head, engine)
                while cursor < newest:
                    batch = await run_in_threadpool(events.page, engine, cursor, wanted, events.PAGE, newest)
                    for event in batch:
                        yield _frame(event)
                    cursor = batch[-1]["id"] if len(batch) == events.PAGE else newest
                if subscriber is not None:
                    break
                subscriber = hub.subscribe(wanted)
            while True:
                try:
                    event = await asyncio.wait_for(subscriber.queue.get(), heartbeat_s)
                except TimeoutError:
                    yield KEEPALIVE_COMMENT
                    continue
                if event["id"] > cursor:
                    cursor = event["id"]
                    yield _frame(event)
                if subscriber.overflowed and subscriber.queue.empty():
                    log.warning("event stream client too slow, disconnected", extra={"last_event_id": cursor})
                    return
        finally:
            if subscriber is not None:
                hub.unsubscribe(subscriber)
    finally:
        slot.release()


def _cursor(header: str | None, after: int | None) -> int | None | JSONResponse:
    if header is None or header.strip() == "":
        return after
    try:
        value = int(header)
    except ValueError:
        value = -1
    if value < 0:
        return failures.invalid(["header", "Last-Event-ID"], f"expected an event id (a whole number), got {header!r}")
    return value


def _gone(where: str, why: str) -> JSONResponse:
    """410 Gone, as Kubernetes answers a watch whose resourceVersion is too old: the client restarts from now."""
    return JSONResponse(
        {
            "detail": f"{where}: cannot resume there, {why}. Start again from now: read the current state "
            f"(GET /v1/{{plural}}), then reconnect without Last-Event-ID or after.",
            "loc": ["header", "Last-Event-ID"] if where == "Last-Event-ID" else ["query", "after"],
        },
        status_code=410,
    )


def router(engine: Engine, settings: Settings) -> tuple[APIRouter, Hub]:
    hub = Hub(settings.database_url, engine, settings)
    routes = APIRouter(tags=["events"])

    @routes.get(
        "/v1/events",
        summary="What happened: a live stream of events, or a page of recent ones",
        description=DESCRIPTION,
        responses={
            200: {
                "content": {"text/event-stream": {}, "application/json": {}},
                "description": "Server-sent events (`id:` the event id, `event:` its type, `data:` the event as JSON), "
                "or with `Accept: application/json` or `stream=false` a JSON list of events, oldest first.",
            },
            410: {
                "description": "Cannot resume after that Last-Event-ID (or `after`): events after it were pruned, "
                "or it was never given (a restored database). Read the current state, then start from now "
                "(no id). A browser's EventSource closes on it (its `onerror`, readyState CLOSED): open a new one."
            },
            503: {"description": "Too many streams open (SETPOINT_EVENTS_MAX_CLIENTS)."},
        },
    )
    async def list_events(
        request: Request,
        kind: Annotated[list[str] | None, Query(description="Only these kinds (repeatable).")] = None,
        name: Annotated[list[str] | None, Query(description="Only resources of these names (repeatable).")] = None,
        type: Annotated[
            list[str] | None, Query(description="Only these types (repeatable): " + ", ".join(events.TYPES))
        ] = None,
        after: Annotated[
            int | None,
            Query(ge=0, description="Start after this event id (for clients that cannot send Last-Event-ID)."),
        ] = None,
        stream: Annotated[bool, Query(description="false: a JSON page instead of a stream.")] = True,
        limit: Annotated[int, Query(ge=1, le=1000, description="The JSON page's size.")] = 100,
        last_event_id: Annotated[
            str | None, Header(alias="Last-Event-ID", description="Resume the stream after this event id.")
        ] = None,
    ) -> Response:
        try:
            wanted = events.Filter.of(kind, name, type)
        except UnknownKind as error:
            return failures.invalid(["query", "kind"], str(error))
        except ValueError as error:
            return failures.invalid(["query", "type"], str(error))
        cursor = _cursor(last_event_id, after)
        if isinstance(cursor, JSONResponse):
            return cursor
        if cursor is not None and (why := await run_in_threadpool(events.gone, engine, cursor)) is not None:
            return _gone("Last-Event-ID" if last_event_id and last_event_id.strip() else "after", why)
        accept = request.headers.get("accept", "")
        if not stream or ("application/json" in accept and "text/event-stream" not in accept):
            if cursor is None:
                found = await run_in_threadpool(events.recent, engine, wanted, limit)
            else:
                newest = await run_in_threadpool(events.head, engine)  # publishes what waits first
                found = await run_in_threadpool(events.page, engine, cursor, wanted, limit, newest)
            return JSONResponse(found)
        slot = hub.take_slot()
        if slot is None:
            return JSONResponse(
                {"detail": f"too many event streams open (at most {settings.events_max_clients}); try again later"},
                status_code=503,
                headers={"Retry-After": "5"},
            )
        body = _stream(hub, slot, engine, cursor, wanted, settings.events_heartbeat_seconds)
        weakref.finalize(body, slot.release)
        # No proxy buffering (nginx), no caching: each event is sent as it comes.
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return EventSourceResponse(body, headers=headers)

    return routes, hub
