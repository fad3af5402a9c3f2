"""`setpoint secret set|list|delete`: secrets written from stdin, a file or a variable, and never printed.

A value is never taken as a command-line argument (`ps` and shell history show those); what is printed of a
secret is that it is set, its digest, when it changed and which resources refer to it (resources/secrets.py).
Exit codes as the other commands: 0 success, 1 failure (not found, database unreachable), 2 invalid input.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from resources import secrets
from setpoint import errors
from setpoint.commands import Reason, acting_as_user, ago, database, err, failures, out
from worker.secrets import MIN_SCRUBBED

app = typer.Typer(
    help="Secrets (connection URLs, passwords, tokens) that resources name and workers read; values are never shown.",
    no_args_is_help=True,
)
SecretName = Annotated[str, typer.Argument(help="The secret's name: lower-case letters, digits, '-', '_', '.'.")]


@app.command("set")
def set_(
    name: SecretName,
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="Read the value from this file instead of stdin.")
    ] = None,
    from_env: Annotated[
        str | None, typer.Option("--from-env", help="Read the value from this environment variable instead.")
    ] = None,
    reason: Reason = None,
) -> None:
    """Create a secret or change its value, read from stdin (or --from-file, --from-env; never an argument).

    One trailing newline of stdin or of the file is dropped (what `echo` and editors add). Every resource that
    refers to the secret is reconciled at once with the new value."""
    with failures(), acting_as_user(reason):
        secrets.check_name(name)
        value = _read_value(name, from_file, from_env)
        done = secrets.put(database(), name, value)
        used = f", used by {len(done.secret.used_by)}" if done.secret.used_by else ""
        out.print(f"secret/{name} {done.change} ({done.secret.digest}{used})")
        if len(value) < MIN_SCRUBBED:
            err.print(
                f"[yellow]note:[/] a value shorter than {MIN_SCRUBBED} characters is not masked in status, history "
                "and logs (it would mangle every message): use a longer one"
            )


def _read_value(name: str, from_file: Path | None, from_env: str | None) -> str:
    if from_file is not None and from_env is not None:
        raise errors.UsageError("give --from-file or --from-env, not both")
    if from_env is not None:
        if from_env not in os.environ:
            raise errors.UsageError(f"environment variable {from_env!r} is not set")
        return os.environ[from_env]
    if from_file is not None:
        try:
            raw = from_file.read_bytes()
        except OSError as error:
            raise errors.UsageError(f"cannot read {from_file}: {error.strerror}") from None
        return _text(raw, str(from_file))
    if sys.stdin.isatty():
        return str(typer.prompt(f"value of secret {name}", hide_input=True, err=True))
    return _text(sys.stdin.buffer.read(), "stdin")


def _text(raw: bytes, origin: str) -> str:
    """The value as text, without one trailing newline."""
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.UsageError(f"the value read from {origin} is not UTF-8 text") from None
    return value.removesuffix("\n").removesuffix("\r")


@app.command("list")
def list_(
    output: Annotated[str, typer.Option("--output", "-o", help="table, json or yaml.")] = "table",
) -> None:
    """Every secret: its name, digest (sha256, cut short), when its value last changed, who refers to it."""
    with failures():
        if output not in ("table", "json", "yaml"):
            raise errors.UsageError(f"--output must be table, json or yaml, got {output!r}")
        found = secrets.listing(database())
        if output == "json":
            print(json.dumps([s.as_json() for s in found], indent=2))
            return
        if output == "yaml":
            import yaml

            print(yaml.safe_dump([s.as_json() for s in found], sort_keys=False), end="")
            return
        if not found:
            err.print("No secrets found.")
            return
        table = Table("NAME", "DIGEST", "UPDATED", "USED BY", box=None)
        for secret in found:
            table.add_row(
                secret.name, secret.digest, ago(secret.updated_at.isoformat()), ", ".join(secret.used_by) or "-"
            )
        out.print(table)


@app.command("delete")
def delete(name: SecretName, reason: Reason = None) -> None:
    """Delete a secret; the resources that refer to it wait (DependencyMissing) until it is set again."""
    with failures(), acting_as_user(reason):
        secrets.check_name(name)
        gone = secrets.delete(database(), name)
        out.print(f"secret/{name} deleted")
        if gone.used_by:
            err.print(
                f"[yellow]note:[/] {', '.join(gone.used_by)} refer to it and wait until "
                f"`setpoint secret set {name}` gives it a value again"
            )
