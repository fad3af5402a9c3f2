"""The App kind's controller: an operator built on the File and Workload operators, through ownership alone.

An App `web` owns one File per config file, named `web-<the first 12 hex digits of the sha256 of its path>` (so
adding or removing one path renames no other), and one Workload named `web` like the app, which depends on the
Files and whose environment has `CONFIG_SHA`: the config files' `{{ File/<name>.outputs.sha256 }}` in path order,
joined by ','. Editing a file's content changes its digest, which rolls the replicas one at a time (a value the
app's own `env` gives CONFIG_SHA is replaced). It writes nothing on the host itself: the owned resources do, each
with its own controller, status and history, and the App is ready when they all are (a change of their
phase or readiness makes it due at once, models/ownership.py). Deleting the App deletes
them (its teardown waits until they are gone): the Workload first, since it depends on the Files.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from models.app import App
from worker import owned
from worker.controller import Action, Controller, Health

FAILING = ("Failed", "Invalid", "Degraded")
"""Phases of an owned resource that make the App degraded rather than progressing."""


@dataclasses.dataclass(frozen=True)
class Part:
    """One resource the App wants: its kind, name and the fields it sets."""

    kind: str
    name: str
    spec: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclasses.dataclass(frozen=True)
class AppState:
    """The resources the App owns now, by `Kind/name`."""

    owned: dict[str, owned.Owned]


def file_name(app: str, path: str) -> str:
    return f"{app}-{hashlib.sha256(path.encode()).hexdigest()[:12]}"


def owner_of(desired: App) -> str:
    return f"{App.kind}/{desired.name}"


def parts(desired: App) -> list[Part]:
    """What the App owns, Files first: a pure function of its row."""
    files = [
        Part(
            "File",
            file_name(desired.name, path),
            {"path": path, "content": content, "interval_seconds": desired.interval_seconds},
        )
        for path, content in sorted(desired.files.items())
    ]
    env: dict[str, Any] = dict(desired.env)
    if files:
        env["CONFIG_SHA"] = ",".join(f"{{{{ File/{part.name}.outputs.sha256 }}}}" for part in files)
    workload = Part(
        "Workload",
        desired.name,
        {
            "command": desired.command,
            "replicas": desired.replicas,
            "env": env,
            "health_command": desired.health_command,
            "health_url": desired.health_url,
            "depends_on": [part.ref for part in files],
            "interval_seconds": desired.interval_seconds,
        },
    )
    return [*files, workload]


class AppController(Controller[App, AppState]):
    model = App

    def observe(self, desired: App) -> AppState:
        return AppState(owned.owned_rows(owner_of(desired)))

    def plan(self, desired: App, actual: AppState) -> list[Action]:
        owner = owner_of(desired)
        wanted = parts(desired)
        actions: list[Action] = [
            owned.ApplyOwned(part.kind, part.name, part.spec, owner)
            for part in wanted
            if owned.differs(part.spec, actual.owned[part.ref].desired if part.ref in actual.owned else None)
        ]
        refs = {part.ref for part in wanted}
        actions += [owned.DeleteOwned(o.kind, o.name, owner) for ref, o in actual.owned.items() if ref not in refs]
        return actions

    def health(self, desired: App, actual: AppState) -> Health:
        wanted = [part.ref for part in parts(desired)]
        missing = [ref for ref in wanted if ref not in actual.owned]
        unready = [o for ref, o in actual.owned.items() if ref in wanted and not o.ready]
        if not missing and not unready:
            return Health(True, "OwnedReady", f"{len(wanted)} owned resources ready")
        said = [f"{ref}: not created yet" for ref in missing]
        said += [f"{o.ref}: {o.phase or 'Pending'}: {o.message}".rstrip(": ") for o in unready]
        failing = any(o.phase in FAILING for o in unready)
        return Health(False, "OwnedNotReady", "waiting for " + "; ".join(said), progressing=not failing)

    def outputs(self, desired: App, actual: AppState) -> dict[str, Any]:
        return {
            "workload": f"Workload/{desired.name}",
            "files": {path: f"File/{file_name(desired.name, path)}" for path in sorted(desired.files)},
        }

    def describe(self, actual: AppState) -> dict[str, Any]:
        return {"owned": {ref: {"phase": o.phase, "ready": o.ready} for ref, o in actual.owned.items()}}
