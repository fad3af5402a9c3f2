"""`setpoint get policies` and `setpoint rollout resume POLICY`: what each policy holds back, and going on after a
halted rollout. Exit codes as the other commands: 0 success, 1 failure (not found, database unreachable), 2 usage.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from scheduler import policy_usage
from setpoint import errors
from setpoint.commands import database, err, failures, out

app = typer.Typer(help="Rollouts that policies (max_unready, max_failures) pace and halt.", no_args_is_help=True)


def _limits(policy: policy_usage.Usage) -> str:
    said = []
    if policy.max_in_flight is not None:
        said.append(f"in flight {policy.in_flight}/{policy.max_in_flight}")
    if policy.max_per_minute is not None:
        burst = f", burst {policy.burst}" if policy.burst is not None else ""
        said.append(f"{policy.max_per_minute}/min{burst}")
    if policy.max_unready is not None:
        said.append(f"unready {policy.unready}/{policy.max_unready}")
    if policy.max_failures is not None:
        said.append(f"failures {policy.failures}/{policy.max_failures}")
    return "; ".join(said)


def _state(policy: policy_usage.Usage) -> str:
    if policy.halted:
        return "halted: " + ", ".join(policy.failed)
    backing_off = policy.backoff_until is not None and policy.backoff_until > datetime.now(UTC)
    return f"backing off until {policy.backoff_until:%H:%M:%S}" if backing_off else "running"


def show(output: str = "table") -> None:
    """Every policy: its scope, its limits with what is used of them, and what it holds back now."""
    with failures():
        if output not in ("table", "json"):
            raise errors.UsageError(f"--output must be table or json for policies, got {output!r}")
        engine = database()
        with engine.connect() as conn:
            found = policy_usage.usage(conn)
        if output == "json":
            print(json.dumps([{**vars(p), "halted": p.halted} for p in found], default=str, indent=2))
            return
        if not found:
            err.print("No policies found.")
            return
        table = Table("NAME", "SCOPE", "LIMITS (USED/MAX)", "WAITING", "HELD", "STATE", box=None)
        for policy in found:
            table.add_row(
                policy.name,
                escape(policy.scope()),
                _limits(policy),
                str(policy.waiting),
                str(policy.held),
                escape(_state(policy)),
            )
        out.print(table)


@app.command()
def resume(policy: Annotated[str, typer.Argument(help="The policy whose rollout halted.")]) -> None:
    """Go on with a rollout that max_failures halted: the failures so far no longer count (the same as
    `UPDATE policies SET resumed_at = now() WHERE name = 'POLICY'`)."""
    with failures():
        if not policy_usage.resume(database(), policy):
            raise errors.NotFound(f"no policy named {policy!r} (setpoint get policies lists them)")
        out.print(f"policy {escape(policy)}: rollout resumed; failures before now no longer halt it")
