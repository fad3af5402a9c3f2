"""The `setpoint` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from setpoint import commands, errors, events_cli, history_cli, policies_cli, secrets_cli, stack, urls
from setpoint import settings as config
from setpoint import up as up_command

app = typer.Typer(
    help="Setpoint keeps real systems matching the desired state written in PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Say which database is used, and why.")]


@app.callback()
def main(ctx: typer.Context, verbose: Verbose = False) -> None:
    """Setpoint keeps real systems matching the desired state written in PostgreSQL."""
    if verbose and ctx.invoked_subcommand not in ("up", "demo"):  # those run servers of their own, and say so
        settings = config.get()
        console.print(f"using database {urls.safe(settings.database_url)}, from {settings.database_url_origin}")


@app.command()
def up(
    concurrency: int = typer.Option(2, "--concurrency", "-c", min=1, help="Worker processes."),
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the scheduler's and worker's own logs, every task.")
    ] = False,
) -> None:
    """Run the scheduler and a worker in the foreground, printing one line per change or failure; Ctrl-C stops
    them (workload replicas keep running: it says which, and how to stop them).

    Uses SETPOINT_DATABASE_URL and SETPOINT_BROKER_URL when set; with neither set, starts an embedded
    PostgreSQL and Redis under SETPOINT_DATA_DIR (default .setpoint/) and writes their URLs to
    .setpoint/urls.json, so that commands run in the same folder use them.
    """
    try:
        say = lambda line: console.print(f"[bold]setpoint[/] {line}")  # noqa: E731
        code = up_command.run(config.get(), concurrency, say, verbose=verbose)
    except errors.UsageError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    except errors.EmbeddedServiceError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def demo(
    chart: Annotated[Path, typer.Option("--chart", help="Where to write the chart of drift.")] = Path(
        "setpoint-demo.png"
    ),
) -> None:
    """Tell the story Setpoint comes from: disorder grows without the reconciler, order returns with it.

    Runs on embedded servers of its own under SETPOINT_DATA_DIR/demo, with real processes.
    """
    from setpoint import demo as story

    try:
        story.run(config.get(), chart, lambda line: console.print(line))
    except errors.UsageError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    except (errors.EmbeddedServiceError, TimeoutError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None


@app.command()
def api(
    port: Annotated[int, typer.Option(help="The port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Serve without SETPOINT_API_TOKEN: anyone who reaches the port can run commands on the workers' "
            "hosts. Allowed only on a loopback --host.",
        ),
    ] = False,
    console_actions: Annotated[
        bool,
        typer.Option(
            "--console-actions",
            help="With --insecure-no-auth: let the web console (/console) reconcile, pause and resume, as "
            "console:anonymous. Without a token the console is otherwise read-only.",
        ),
    ] = False,
) -> None:
    """Serve the REST API over desired state (OpenAPI at /docs) and the web console (/console); every request needs
    SETPOINT_API_TOKEN as a bearer token (the console asks for it once). Without a token it refuses to start, unless
    --insecure-no-auth on a loopback address."""
    from api import server

    try:
        server.serve(config.get(), host, port, insecure_no_auth=insecure_no_auth, console_actions=console_actions)
    except errors.UsageError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None


@app.command()
def migrate() -> None:
    """Migrate the database at SETPOINT_DATABASE_URL to the latest schema (alembic upgrade head)."""
    stack.migrate(config.get().database_url)
    console.print("database migrated to head")


commands.register(app)
history_cli.register(app)
app.command("events")(events_cli.events_command)
app.add_typer(secrets_cli.app, name="secret")
app.add_typer(policies_cli.app, name="rollout")

if __name__ == "__main__":
    app()
