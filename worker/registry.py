"""Which controller handles which kind: the built-in ones, those named by entry points, and any registered by hand.

A package adds kinds without forking Setpoint by declaring, in its pyproject.toml,

    [project.entry-points."setpoint.controllers"]
    Widget = "my_package.widget:WidgetController"

or by calling `registry.register(WidgetController())` from a module named in SETPOINT_CONTROLLERS.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from setpoint import settings as config
from setpoint.errors import UnknownKind
from worker.controller import Controller

GROUP = "setpoint.controllers"

_controllers: dict[str, Controller[Any, Any]] = {}
_loaded = False


def register(controller: Controller[Any, Any]) -> None:
    """Make `controller` handle its model's kind (the last registration of a kind wins)."""
    _controllers[controller.model.kind] = controller


def _load() -> None:
    global _loaded
    if _loaded:
        return
    from controllers.app import AppController
    from controllers.file import FileController
    from controllers.http_object import HTTPObjectController
    from controllers.mysql_database import MySQLDatabaseController
    from controllers.mysql_grant import MySQLGrantController
    from controllers.mysql_user import MySQLUserController
    from controllers.postgres_database import PostgresDatabaseController
    from controllers.postgres_grant import PostgresGrantController
    from controllers.postgres_role import PostgresRoleController
    from controllers.workload import WorkloadController

    _loaded = True  # before the imports below, which may call register() and so come back here
    register(FileController())
    register(WorkloadController())
    register(AppController())
    register(MySQLUserController())
    register(MySQLDatabaseController())
    register(MySQLGrantController())
    register(HTTPObjectController())
    register(PostgresRoleController())
    register(PostgresDatabaseController())
    register(PostgresGrantController())
    for entry in entry_points(group=GROUP):
        register(entry.load()())
    for module in config.get().controllers.split(","):  # SETPOINT_CONTROLLERS: modules calling register()
        if module.strip():
            importlib.import_module(module.strip())


def get(kind: str) -> Controller[Any, Any]:
    _load()
    try:
        return _controllers[kind]
    except KeyError:
        known = ", ".join(sorted(_controllers)) or "none"
        raise UnknownKind(f"no controller is registered for kind {kind!r} (known: {known})") from None


def controllers() -> dict[str, Controller[Any, Any]]:
    """Every registered controller by its kind's name."""
    _load()
    return dict(_controllers)
