"""`setpoint history`, `setpoint diff` and `setpoint rollback`: who changed a resource's desired state, what
changed between two generations, and an earlier generation written back as a new one (resources/history.py).

Exit codes as the other commands: 0 success, 1 failure (not found, database unreachable), 2 invalid input (a
generation that is not in the resource's history among them).
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Annotated

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from resources import history, kinds
from setpoint import errors
from setpoint.commands import KindArg, NameArg, Output, Reason, acting_as_user, database, err, failures, out
from setpoint.events_cli import printable

Limit = Annotated[int, typer.Option("--limit", min=1, max=history.MAX_PAGE, help="At most this many, newest first.")]


def history_command(kind: KindArg, name: NameArg, output: Output = "table", limit: Limit = 50) -> None:
    """Who changed the resource's desired state, when, why and what, newest first (-o json|yaml: every field, the
    old and new values included). Kept: the last SETPOINT_HISTORY_CHANGES_KEPT changes of each resource."""
    with failures():
        found = history.kind_name(kind)
        changes = history.entries(database(), found, name, limit=limit)
        if output in ("json", "yaml"):
            shown = [entry.as_json() for entry in changes]
            print(json.dumps(shown, indent=2) if output == "json" else yaml.safe_dump(shown, sort_keys=False), end="")
            return
        if output != "table":
            raise errors.UsageError(f"--output must be table, json or yaml, got {output!r}")
        if not changes:
            err.print(f"No history for {found}/{name}.")
            return
        table = Table("GEN", "TIME", "OPERATION", "WHO", "REASON", "CHANGED", box=None)
        for entry in changes:
            table.add_row(
                str(entry.generation) if entry.generation is not None else "-",
                entry.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                entry.operation,
                escape(printable(entry.who)),
                escape(printable(entry.reason)),
                escape(printable(", ".join(sorted(entry.changed)))),
            )
        out.print(table)


def diff(
    kind: KindArg,
    name: NameArg,
    from_: Annotated[int, typer.Option("--from", help="The older generation.")],
    to: Annotated[int | None, typer.Option("--to", help="The newer generation (default: the current one).")] = None,
) -> None:
    """What differs in the desired state between two generations: each field old -> new, text of several lines
    as a unified diff."""
    with failures():
        found = kinds.resolve(kind)
        fields = history.diff(database(), found, name, from_, to)
        if not fields:
            out.print(f"{found.name.lower()}/{name}: no difference in desired state")
        for field in fields:
            for line in field.lines():
                out.print(escape(printable(line)), highlight=False)


def rollback(
    kind: KindArg,
    name: NameArg,
    to_generation: Annotated[int, typer.Option("--to-generation", help="The generation to go back to.")],
    reason: Reason = None,
) -> None:
    """Write an earlier generation's desired columns as a new generation (history is never rewritten); the
    controller then makes the real thing follow. Name, uid and node stay as they are, and so do paused, owned_by
    and deletion_policy (how it is operated, not what it is)."""
    with failures(), acting_as_user(reason):
        found = kinds.resolve(kind)
        rolled = history.rollback(database(), found, name, to_generation)
        label = f"{found.name.lower()}/{name}"
        kept = f"; left as they are: {', '.join(rolled.kept)}" if rolled.kept else ""
        if not rolled.changed:
            out.print(f"{label} already has generation {to_generation}'s desired state: nothing written{kept}")
            return
        out.print(
            f"{label} rolled back to generation {to_generation} as generation {rolled.generation} "
            f"(restored: {', '.join(rolled.fields)}{kept})"
        )


def register(app: typer.Typer) -> None:
    app.command("history")(history_command)
    app.command()(diff)
    app.command()(rollback)
