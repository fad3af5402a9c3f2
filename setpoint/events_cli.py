"""`setpoint events [-w]` and the live part of `setpoint get -w`: what happened, read from the events table.

Both follow the database itself (LISTEN on the inbox's channel, then publish and read; resources/events.py), so
they need no API server. Ctrl-C ends a watch with exit code 0, as kubectl's does.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine

from resources import documents, events, kinds
from setpoint import commands, errors
from setpoint import settings as config

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BREAKS = re.compile(r"[\t\n]")


def printable(said: str | None, *, lines: bool = False) -> str:
    """Text read from the database as the terminal may see it: control characters dropped (an ESC sequence in a
    message could otherwise clear the screen, retitle the window or hide what follows), and tabs and newlines made
    spaces unless `lines` (text shown as lines keeps its newlines)."""
    said = _BREAKS.sub(" ", said or "") if not lines else (said or "").replace("\t", " ")
    return _CONTROL.sub("", said)


Watch = Annotated[bool, typer.Option("--watch", "-w", help="After the list, print each new one as it happens.")]


def _filter(kind: list[str], name: list[str], type_: list[str]) -> events.Filter:
    try:
        return events.Filter.of(kind, name, type_)
    except ValueError as error:  # an unknown type (an unknown kind is UnknownKind, said the same way)
        raise errors.UsageError(f"--type: {error}") from None


def _clock(at: str) -> str:
    return datetime.fromisoformat(at).astimezone().strftime("%H:%M:%S")


def _line(event: dict[str, Any]) -> str:
    generation = f" gen {event['generation']}" if event["generation"] is not None else ""
    return printable(
        f"{_clock(event['at'])}  {event['kind']}/{event['name']}  {event['type']}  "
        f"{event['reason'] or '-'}{generation}  {event['message'] or ''}"
    )


@contextlib.contextmanager
def _until_interrupted() -> Iterator[threading.Event]:
    """A stop flag for a follower; Ctrl-C ends the watch quietly (exit 0)."""
    stop = threading.Event()
    try:
        yield stop
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()


def follow(engine: Engine, after: int, wanted: events.Filter, say: Callable[[dict[str, Any]], None]) -> None:
    """Call `say` for each event after `after` that `wanted` matches, as it is published, until Ctrl-C."""
    follower = events.Follower(config.get().database_url, engine)
    with _until_interrupted() as stop:
        for batch in follower.batches(after, wanted, stop):
            for event in batch:
                say(event)


def _print(line: str) -> None:
    commands.out.print(line, markup=False, highlight=False)
    commands.out.file.flush()  # one line as each event comes, even into a pipe


def events_command(
    kind: Annotated[list[str], typer.Option("--kind", help="Only this kind (repeatable).")] = [],  # noqa: B006
    name: Annotated[list[str], typer.Option("--name", help="Only resources of this name (repeatable).")] = [],  # noqa: B006
    type_: Annotated[
        list[str], typer.Option("--type", help="Only this type (repeatable): " + ", ".join(events.TYPES))
    ] = [],  # noqa: B006
    watch: Watch = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many recent events to list.")] = 50,
    output: commands.Output = "table",
) -> None:
    """What happened, newest last: each resource's transitions (became ready, drift corrected, failed, recovered,
    deleted, ...), one per transition, never one per reconcile. -w then prints each new one as it happens;
    -o json prints them as JSON (with -w, one object per line)."""
    with commands.failures():
        if output not in ("table", "json"):
            raise errors.UsageError(f"--output must be table or json, got {output!r}")
        wanted = _filter(kind, name, type_)
        engine = commands.database()
        after = events.head(engine)
        shown = events.recent(engine, wanted, limit)
        shown = [event for event in shown if event["id"] <= after]  # what was published since comes with -w
        if output == "json" and not watch:
            print(json.dumps(shown, indent=2))
            return
        if output == "json":
            for event in shown:
                print(json.dumps(event), flush=True)
        elif shown:
            table = Table("TIME", "OBJECT", "TYPE", "REASON", "GEN", "MESSAGE", box=None)
            for event in shown:
                table.add_row(
                    _clock(event["at"]),
                    escape(printable(f"{event['kind']}/{event['name']}")),
                    escape(printable(event["type"])),
                    escape(printable(event["reason"] or "-")),
                    str(event["generation"] if event["generation"] is not None else "-"),
                    escape(printable(event["message"])),
                )
            commands.out.print(table)
        elif not watch:
            commands.err.print("No events found.")
        if watch:
            if output == "json":
                follow(engine, after, wanted, lambda event: print(json.dumps(event), flush=True))
            else:
                follow(engine, after, wanted, lambda event: _print(_line(event)))


def watch_rows(engine: Engine, kind: kinds.Kind, name: str | None, after: int) -> None:
    """`setpoint get -w`: after the table, a new row whenever an event of the kind (and name) comes."""
    wanted = events.Filter(kinds=(kind.name,), names=(name,) if name else ())

    def row(event: dict[str, Any]) -> None:
        try:
            item = documents.get(engine, kind, event["name"])
        except errors.NotFound:  # gone (a Deleted event): say so in the row
            cells = [event["name"], "no", "Deleted", str(event["generation"] or "-"), "-", event["message"] or ""]
        else:
            cells = commands.row_cells(item)
        table = Table(*(" " for _ in cells), box=None, show_header=False)
        table.add_row(*(escape(printable(cell)) for cell in cells))
        commands.out.print(table)
        commands.out.file.flush()

    follow(engine, after, wanted, row)
