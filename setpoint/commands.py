"""The kubectl-style commands over desired state (apply, get, describe, tree, plan, delete, reconcile, pause,
kinds) and over the worker nodes (node list, node drain, node forget).

They read and write the same tables as SQL and the REST API (through resources/), so each shows the
others' changes at once. Exit codes: 0 success, 1 failure, 2 invalid input or usage, and for `plan` 3 when
there are changes to make (PLAN_CHANGES_PENDING, as `terraform plan -detailed-exitcode` says 2).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import time
from collections.abc import Iterator
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from rich.tree import Tree
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from models import change
from models.database import make_engine
from resources import documents, graph, kinds, manifest, nodes
from setpoint import errors
from setpoint import settings as config
from worker import needs, references, secrets
from worker.celery_app import queue_for
from worker.runtime import run_controller

PLAN_CHANGES_PENDING = 3
"""`setpoint plan`'s exit code when the controller would change something (0 means in sync)."""

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

KindArg = Annotated[str, typer.Argument(help="file, File or files; `setpoint kinds` lists them.")]
NameArg = Annotated[str, typer.Argument(help="The resource's name.")]
Output = Annotated[str, typer.Option("--output", "-o", help="table, json or yaml.")]
Reason = Annotated[
    str | None, typer.Option("--reason", help="Why: recorded with the change, shown by `setpoint history`.")
]
Files = Annotated[
    list[str], typer.Option("--filename", "-f", help="A manifest file, a folder of them, or - for stdin.")
]


@contextlib.contextmanager
def failures() -> Iterator[None]:
    """Errors become one clear line and an exit code, never a traceback."""
    try:
        yield
    except (errors.InvalidDocument, errors.UnknownKind, errors.UsageError) as error:
        err.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    except errors.NotFound as error:
        err.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None
    except OperationalError as error:
        why, origin = str(error.orig).strip().splitlines()[0], config.get().database_url_origin
        err.print(f"[red]error:[/] {escape(f'cannot reach the database: {why}; its URL is from {origin}')}")
        raise typer.Exit(1) from None


def database() -> Engine:
    """The database of SETPOINT_DATABASE_URL, its desired-state writes recorded as the CLI user's (acting_as_user)."""
    return change.track(make_engine(config.get().database_url))


def acting_as_user(reason: str | None) -> contextlib.AbstractContextManager[None]:
    """The desired-state changes made inside are recorded as this user's (`cli:alice`), with `reason`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name, no passwd entry (a container's arbitrary uid)
        import os

        user = f"uid{os.getuid()}"
    return change.acting(f"cli:{user}", reason)


def apply(
    filename: Files,
    wait: Annotated[bool, typer.Option(help="Wait until every applied resource is ready.")] = False,
    timeout: Annotated[float, typer.Option(help="How long --wait waits, in seconds.")] = 300,
    reason: Reason = None,
) -> None:
    """Create or update every document in one transaction; if any is invalid, nothing is applied."""
    with failures(), acting_as_user(reason):
        docs = [doc for target in filename for doc in manifest.load(target)]
        if not docs:
            raise errors.UsageError(f"no documents in {', '.join(filename)}")
        engine = database()
        applied = documents.apply(engine, docs)
        for item in applied:
            out.print(f"{item.kind.lower()}/{item.name} {item.action}")
        if wait:
            _wait_ready(engine, [(kinds.resolve(a.kind), a.name, a.generation) for a in applied], timeout)


def _wait_ready(engine: Engine, targets: list[tuple[kinds.Kind, str, int]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("waiting until ready", total=len(targets))
        while True:
            views = [documents.get(engine, kind, name) for kind, name, _ in targets]
            done = sum(
                1
                for view, (_, _, generation) in zip(views, targets, strict=True)
                if view["status"]["ready"] and view["status"].get("observed_generation") == generation
            )
            progress.update(task, completed=done)
            if done == len(targets):
                return
            if time.monotonic() > deadline:
                waiting = [
                    f"{v['kind'].lower()}/{v['name']}: {v['status']['message'] or v['status']['phase']}"
                    for v in views
                    if not v["status"]["ready"]
                ]
                err.print(f"[red]error:[/] not ready after {timeout_s:g}s: " + "; ".join(waiting))
                raise typer.Exit(1)
            time.sleep(0.5)


def delete(
    kind: Annotated[str | None, typer.Argument(help="The kind, unless -f is given.")] = None,
    name: Annotated[str | None, typer.Argument(help="The name, unless -f is given.")] = None,
    filename: Files = [],  # noqa: B006 - typer reads the default, never mutates it
    reason: Reason = None,
) -> None:
    """Delete resources; their controllers tear the real things down."""
    with failures(), acting_as_user(reason):
        if filename:
            targets = [(doc.kind, doc.name) for target in filename for doc in manifest.load(target)]
        elif kind and name:
            targets = [(kind, name)]
        else:
            raise errors.UsageError("give KIND NAME, or -f with manifests")
        engine = database()
        for kind_text, resource in targets:
            found = kinds.resolve(kind_text)
            documents.delete(engine, found, resource)
            out.print(f"{found.name.lower()}/{resource} deleted")


def get(
    kind: KindArg,
    name: Annotated[str | None, typer.Argument(help="One resource; all of the kind if left out.")] = None,
    output: Output = "table",
    phase: Annotated[str | None, typer.Option(help="Only resources in this phase.")] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="After the table, print a new row whenever one of them changes.")
    ] = False,
) -> None:
    """List resources with their status, or show one; -o json|yaml prints {kind, name, spec, status}; -w then
    prints a row each time an event of theirs happens (Ctrl-C ends it), as `kubectl get -w` does.
    `setpoint get policies` lists the policies, their limits and what they hold back."""
    if kind.lower() in ("policies", "policy") and name is None:
        from setpoint import policies_cli

        return policies_cli.show(output)
    from resources import events

    with failures():
        found = kinds.resolve(kind)
        engine = database()
        if watch and output != "table":
            raise errors.UsageError("--watch prints a table: leave out --output")
        after = events.head(engine) if watch else 0  # every event after the table was read comes as a row
        items = (
            [documents.get(engine, found, name)]
            if name
            else documents.listing(engine, found, phase=phase, limit=10_000)
        )
        if output in ("json", "yaml"):
            print(manifest.dump(items, output))
            return
        if output != "table":
            raise errors.UsageError(f"--output must be table, json or yaml, got {output!r}")
        if not items:
            err.print(f"No {found.plural} found.")  # as kubectl says, on stderr: stdout stays a table or nothing
        else:
            table = Table("NAME", "READY", "PHASE", "GENERATION", "LAST RECONCILE", "MESSAGE", box=None)
            for item in items:
                table.add_row(*row_cells(item))
            out.print(table)
        if watch:
            from setpoint import events_cli

            out.file.flush()
            events_cli.watch_rows(engine, found, name, after)


def row_cells(item: dict[str, Any]) -> list[str]:
    """One resource's row in `get`'s table."""
    status = item["status"]
    observed = status.get("observed_generation")
    return [
        item["name"],
        "yes" if status["ready"] else "no",
        status["phase"],
        f"{status['generation']}/{observed if observed is not None else '-'}",
        ago(status.get("last_reconcile_at")),
        status["message"],
    ]


def ago(timestamp: str | None) -> str:
    if not timestamp:
        return "never"
    from datetime import UTC, datetime

    seconds = (datetime.now(UTC) - datetime.fromisoformat(timestamp)).total_seconds()
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def describe(kind: KindArg, name: NameArg) -> None:
    """Everything about one resource: spec, status, conditions, drift, its dependencies and dependents, outputs,
    owner and owned resources with their phases, the references resolved, and the last runs."""
    with failures(), secrets.recording() as used:
        found = kinds.resolve(kind)
        engine = database()
        item = documents.get(engine, found, name)
        status = item["status"]
        out.print(
            f"[bold]{found.name}/{name}[/]  phase {status['phase']}, ready {status['ready']}, "
            f"generation {status['generation']}, observed {status.get('observed_generation')}"
        )
        out.print("[bold]Spec[/]")
        for key, value in item["spec"].items():
            out.print(f"  {key}: {escape(json.dumps(value))}")
        resolved = _resolved(engine, found, item)
        if found.model.templated:
            out.print("[bold]References resolved[/]")
            _print_resolved(found, item, resolved, used)
        out.print("[bold]Conditions[/]")
        for condition in status.get("conditions") or []:
            out.print(
                f"  {condition['type']}={condition['status']} {condition['reason']}: {condition['message']}"
                f" (since {condition['last_transition_time']})"
            )
        out.print("[bold]Drift[/]")
        for change in status.get("drift") or []:
            out.print(f"  {change.get('change')}")
        if status.get("last_error"):
            out.print(f"[bold]Last error[/]\n  {status['last_error']}")
        _print_links("Dependencies", status["dependencies"])
        _print_links("Dependents", status["dependents"])
        out.print("[bold]Outputs[/]")
        for key, value in (status.get("outputs") or {}).items():
            out.print(f"  {key}: {escape(json.dumps(value))}")
        if not status.get("outputs"):
            out.print("  <none>")
        _print_links("Owner", [status["owner"]] if status.get("owner") else [])
        _print_links("Owned", status["owned"])
        table = Table("STARTED", "GEN", "OUTCOME", "ACTIONS", "ERROR", "WORKER", box=None, title="Last runs")
        for run in documents.runs(engine, found, name, uid=item["uid"]):
            table.add_row(
                str(run["started_at"])[:19],
                str(run["generation"]),
                run["outcome"],
                "; ".join(run["actions"]),
                run["error"] or "",
                run["worker"] or "",
            )
        out.print(table)


def _print_links(title: str, links: list[dict[str, Any]]) -> None:
    out.print(f"[bold]{title}[/]")
    for link in links:
        out.print(f"  {_label(link)}")
    if not links:
        out.print("  <none>")


def _label(link: dict[str, Any]) -> str:
    return f"{link['ref']}  {link['phase']}, {'ready' if link['ready'] else 'not ready'}"


def _resolved(engine: Engine, found: kinds.Kind, item: dict[str, Any]) -> tuple[references.Resolved, needs.Hold | None]:
    """The desired state as its controller would see it now (references resolved as the worker resolves them,
    from the outputs of its dependencies), and why it would not act now, if it would not."""
    desired = found.model.model_validate(
        {"name": item["name"], "generation": item["status"]["generation"], **item["spec"], "paused": True}
    )
    with engine.connect() as conn:
        found_needs = needs.read(conn, found.name, item["name"])
    resolved = references.resolve(desired, found_needs)
    return resolved, needs.hold(found_needs, resolved.unresolved)


def _print_resolved(
    found: kinds.Kind, item: dict[str, Any], resolved: tuple[references.Resolved, Any], used: set[str]
) -> None:
    """Each templated field whose references resolve to something else than what the row says, as resolved; the
    values of secrets (`used`, read while resolving) shown as `***`."""
    shown = False
    for field in found.model.templated:
        value = getattr(resolved[0].desired, field)
        if value != item["spec"].get(field):
            out.print(f"  {field}: {escape(secrets.scrub(json.dumps(value), used))}")
            shown = True
    for unresolved in resolved[0].unresolved:
        out.print(f"  unresolved: {escape(unresolved)}")
        shown = True
    if not shown:
        out.print("  <none>")


def tree(kind: KindArg, name: NameArg, output: Output = "table") -> None:
    """The resource, what it depends on and what it owns, recursively, each with its phase and readiness;
    -o json|yaml prints the same tree as {ref, phase, ready, dependencies, owned}."""
    with failures():
        found = kinds.resolve(kind)
        engine = database()
        documents.get(engine, found, name)  # NotFound, as the other commands say it
        with engine.connect() as conn:
            root, cut = graph.tree(conn, found.name, name)
        if output in ("json", "yaml"):
            print(manifest.dump([root.as_json()], output))
        elif output == "table":
            drawn = Tree(_node_label(root, ""))
            _grow(drawn, root)
            out.print(drawn)
        else:
            raise errors.UsageError(f"--output must be table, json or yaml, got {output!r}")
        if cut:
            err.print(f"[yellow]note:[/] the tree was cut at {graph.MAX_TREE_NODES} resources")


def _node_label(node: graph.Node, relation: str) -> str:
    ready = "[green]ready[/]" if node.ready else "[red]not ready[/]"
    label = f"{relation}[bold]{escape(node.ref)}[/]  {escape(node.phase)}, {ready}"
    return label + ("  (shown above)" if node.seen else "")


def _grow(branch: Tree, node: graph.Node) -> None:
    for relation, children in (("depends on ", node.dependencies), ("owns ", node.owned)):
        for child in children:
            _grow(branch.add(_node_label(child, relation)), child)


def plan(kind: KindArg, name: NameArg) -> None:
    """What the controller would do now, observed from this host; nothing is changed (like terraform plan).
    References to other resources' outputs are resolved as a worker resolves them; a dependency not ready is named.

    Exit codes: 0 in sync, 3 changes pending, 1 failure (or references that cannot be resolved yet), 2 invalid
    input."""
    with failures(), secrets.recording() as used:  # secrets read here are printed as ***
        found = kinds.resolve(kind)
        engine = database()
        item = documents.get(engine, found, name)
        resolved, hold = _resolved(engine, found, item)
        label = f"{found.name.lower()}/{name}"
        if any(getattr(resolved.desired, f) != item["spec"].get(f) for f in found.model.templated):
            out.print("references resolved:")
            _print_resolved(found, item, (resolved, hold), used)
        if resolved.unresolved:
            reason = hold.message if hold is not None else "; ".join(resolved.unresolved)
            err.print(f"[red]error:[/] {label} cannot be planned until its references resolve: {escape(reason)}")
            raise typer.Exit(1)
        if hold is not None:
            out.print(f"{label} does not act yet, {escape(hold.message)} ({hold.reason}); the changes below wait")
        result = run_controller(found.controller, resolved.desired, deleting=False)
        if result.error:
            err.print(f"[red]error:[/] {result.reason}: {escape(secrets.scrub(result.error, used))}")
            raise typer.Exit(1)
        if not result.drift:
            out.print(f"{label} is in sync: nothing to do")
            return
        for step in result.drift:
            out.print(f"  ~ {escape(secrets.scrub(step, used))}")
    raise typer.Exit(PLAN_CHANGES_PENDING)


def reconcile(kind: KindArg, name: NameArg, reason: Reason = None) -> None:
    """Reconcile now instead of at the next interval (the scheduler enqueues it within a tick); recorded in its
    history as yours."""
    with failures(), acting_as_user(reason):
        found = kinds.resolve(kind)
        documents.reconcile_now(database(), found, name)
        out.print(f"{found.name.lower()}/{name} due now")


def pause(kind: KindArg, name: NameArg, reason: Reason = None) -> None:
    """Observe and report drift, but take no action."""
    _set_paused(kind, name, True, reason)


def resume(kind: KindArg, name: NameArg, reason: Reason = None) -> None:
    """Act on drift again."""
    _set_paused(kind, name, False, reason)


def _set_paused(kind: str, name: str, paused: bool, reason: str | None) -> None:
    with failures(), acting_as_user(reason):
        found = kinds.resolve(kind)
        documents.set_paused(database(), found, name, paused)
        out.print(f"{found.name.lower()}/{name} {'paused' if paused else 'resumed'}")


def kinds_command(output: Output = "table") -> None:
    """The registered kinds and the fields of their specs."""
    with failures():
        registered = kinds.all_kinds().values()
        if output in ("json", "yaml"):
            described: list[dict[str, Any]] = [
                {"kind": k.name, "plural": k.plural, "spec": k.spec.model_json_schema()} for k in registered
            ]
            print(manifest.dump(described, output))
            return
        table = Table("KIND", "PLURAL", "FIELDS", box=None)
        for k in registered:
            table.add_row(k.name, k.plural, ", ".join(k.spec_fields))
        out.print(table)


node_app = typer.Typer(
    help="The worker nodes: which are alive, and moving resources off one that is gone.", no_args_is_help=True
)
NodeArg = Annotated[str, typer.Argument(help="The node's name, as `setpoint node list` shows it.")]
Force = Annotated[bool, typer.Option("--force", help="Act even though the node's worker is still alive.")]


@contextlib.contextmanager
def _broker() -> Iterator[redis.Redis]:
    """The broker whose node queues `drain` and `forget` delete; one it cannot reach fails the command, which
    then changes nothing."""
    broker = redis.Redis.from_url(config.get().broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        yield broker
    except redis.RedisError as error:
        err.print(f"[red]error:[/] cannot reach the broker (SETPOINT_BROKER_URL): {error}; nothing was changed")
        raise typer.Exit(1) from None
    finally:
        broker.close()


def _print_dropped(node: str, queue: str, moved: nodes.Moved) -> None:
    if moved.dropped is not None:
        plural = "" if moved.dropped == 1 else "s"
        out.print(f"queue {queue} of node {node} deleted ({moved.dropped} superseded message{plural})")


@node_app.command("list")
def node_list() -> None:
    """Every node, whether its worker is alive (a heartbeat within SETPOINT_NODE_SILENT_SECONDS), its resources."""
    with failures():
        views = nodes.listing(database(), silent_s=config.get().node_silent_seconds)
        table = Table("NODE", "STATE", "LAST SEEN", "STARTED", "WORKER", "VERSION", "RESOURCES", "DELETING", box=None)
        for view in views:
            state = "alive" if view.alive else ("silent" if view.last_seen_at else "never seen")
            table.add_row(
                view.name,
                state,
                nodes.ago(view.since_s),
                str(view.started_at)[:19] if view.started_at else "-",
                view.worker or "-",
                view.version or "-",
                str(view.resources),
                str(view.deleting),
            )
        out.print(table)


@node_app.command("drain")
def node_drain(
    name: NodeArg,
    to: Annotated[str, typer.Option("--to", help="The live node to move the resources to.")],
    force: Force = False,
) -> None:
    """Move the resources pinned to a gone node to another one, due at once (their real things are made there);
    once nothing is left on it, delete its queue in the broker."""
    with failures(), _broker() as broker:
        settings, queue = config.get(), queue_for(name)
        moved = nodes.drain(
            database(), broker, name, to, queue=queue, silent_s=settings.node_silent_seconds, force=force
        )
        for kind, resource in moved.moved:
            out.print(f"{kind.lower()}/{resource} moved to {to}")
        _print_bound(name, moved)
        _print_dropped(name, queue, moved)
        out.print(f"{len(moved.moved)} moved from {name} to {to}, due now")


@node_app.command("forget")
def node_forget(name: NodeArg, force: Force = False) -> None:
    """Forget a gone node: unpin its resources (the next worker takes them), drop the tombstones left there,
    whose teardown can no longer run, so their names can be used again, and delete its queue in the broker."""
    with failures(), _broker() as broker:
        settings, queue = config.get(), queue_for(name)
        moved = nodes.forget(database(), broker, name, queue=queue, silent_s=settings.node_silent_seconds, force=force)
        for kind, resource in moved.moved:
            out.print(f"{kind.lower()}/{resource} unpinned")
        for kind, resource in moved.forgotten:
            out.print(f"{kind.lower()}/{resource} forgotten (was being deleted; its teardown on {name} never ran)")
        _print_bound(name, moved)
        _print_dropped(name, queue, moved)
        out.print(f"node {name} forgotten: {len(moved.moved)} unpinned, {len(moved.forgotten)} tombstones forgotten")


def _print_bound(node: str, moved: nodes.Moved) -> None:
    for kind, resource in moved.bound:
        err.print(
            f"[yellow]note:[/] {kind.lower()}/{resource} names node {node} in its desired row and stays there: "
            "delete it and insert it with another node to move it"
        )


def register(app: typer.Typer) -> None:
    for command in (apply, get, describe, tree, plan, delete, reconcile, pause, resume):
        app.command()(command)
    app.command("kinds")(kinds_command)
    app.add_typer(node_app, name="node")
